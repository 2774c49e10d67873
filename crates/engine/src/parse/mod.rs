//! Parsers of text from outside: Anthropic HH transcripts ([`transcript`]) and a judge's
//! verdict ([`verdict`]). Both take anything (fuzzed in `benches/trust.rs`, property-tested)
//! and never panic.

pub mod transcript;
pub mod verdict;
