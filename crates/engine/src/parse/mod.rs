//! Parsers of text from outside: Anthropic HH transcripts ([`transcript`]), a judge's
//! verdict ([`verdict`]) and a critique's harm verdicts on thinking and answer ([`harm`]). Both take anything (fuzzed in `benches/trust.rs`, property-tested)
//! and never panic.

pub mod harm;
pub mod transcript;
pub mod verdict;
