//! The request journal: every completed request of a run, keyed by its request hash (model,
//! normalized messages, sampling parameters, seed, prompt-template version).
//!
//! A resume or re-run serves journalled results without calling the endpoint. Failures are
//! journalled as failures (with their reason) and are never served: they are retried.
//!
//! **Layout.** Outcomes are JSON lines in segment objects (`journal/NAME.jsonl`); beside each
//! segment, `journal/NAME.idx` indexes it: one 16-byte record per line (the first 8 bytes of
//! the request hash, then the line's byte offset, whose top bit marks a failure).
//!
//! **Lookups without the results in memory.** Opening a journal reads only the indexes (16
//! bytes an entry, never the answers' text) into one sorted array of (hash prefix, segment and
//! offset): 16 bytes per result resident, so start-up time and memory grow with the number of
//! entries, not with the size of the answers. A lookup binary-searches the array, reads the
//! one line at its offset (a positioned read of a local file, a ranged GET on S3) and checks
//! the full hash. Outcomes recorded in this session are found through a map of the same 16
//! bytes per entry. A segment without an index (a journal written before indexes, or one cut
//! off by a crash between its two writes) is scanned once on open, and its index is written
//! when the run continues.
//!
//! **Durability.** On a local store each outcome is appended to this process's segment and
//! index as it completes (one `write` each; the page cache survives `kill -9`), so a resume
//! repeats at most the requests that were in flight. Object stores have no append: there,
//! outcomes are buffered and written as a new segment and index every 100 ms, or as soon as
//! 256 are waiting, so at most the requests in flight and about 100 ms of completions are
//! repeated (at most 10 PUT pairs a second while outcomes arrive, plus one per 256 outcomes).
//! Every 64 segments of a session are rolled up into one (written before the small ones are
//! deleted: a crash in between leaves duplicates, which are harmless), and at the end of a
//! run the session's segments are merged into one, streamed, without its failures.
//!
//! `journal/SCHEME` names the request-hash scheme the journal's keys were computed with
//! ([`caiflow_llm::REQUEST_HASH_SCHEME`]). Entries of another scheme can never match a request
//! of this one: opening such a journal says how many requests will be sent again, before
//! anything is sent, instead of silently paying twice. Nothing is ever deleted for it: a
//! missing SCHEME file means the current scheme (entries that do not match are never served).
//!
//! | concern | module |
//! |---|---|
//! | the journal: open, lookup, record, append, flush | [`core`] |
//! | the line format | [`format`] |
//! | segment indexes | [`index`] |
//! | segments | [`segments`] |
//! | roll-up and end-of-run compaction | [`compaction`] |
//! | batches in flight at a provider (batch mode) | [`batches`] |

pub mod batches;
mod compaction;
pub mod core;
pub mod format;
pub mod index;
pub mod segments;

pub use core::{FLUSH_EVERY, FLUSH_LINES, Journal, JournalStats};
pub use segments::SegmentWriter;
