//! A segment's index (`NAME.idx`): one 16-byte record per line (the first 8 bytes of the
//! request hash, then the line's location, whose top bit marks a failure), read on open, or
//! built by scanning a segment that has none.

use futures::StreamExt;

use super::format::{Lines, line_key};
use crate::error::Result;
use crate::store::RunStore;

/// Marks an index record's line as a failure.
pub(super) const FAILURE: u64 = 1 << 63;
/// Bytes of one index record.
pub(super) const RECORD: usize = 16;
/// Offsets take the low 40 bits of a location, segment ids the 24 above (1 TiB a segment,
/// 16 million segments).
pub(super) const OFFSET_BITS: u32 = 40;

pub(super) fn location(segment: u32, offset: u64) -> u64 {
    (u64::from(segment) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
}

pub(super) fn split_location(loc: u64) -> (u32, u64) {
    ((loc >> OFFSET_BITS) as u32, loc & ((1 << OFFSET_BITS) - 1))
}

pub(super) fn index_record(key: u64, offset: u64, ok: bool) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..8].copy_from_slice(&key.to_le_bytes());
    r[8..].copy_from_slice(&(offset | if ok { 0 } else { FAILURE }).to_le_bytes());
    r
}

/// (key, offset, ok) of each whole record of an index (a torn tail is ignored).
pub(super) fn index_records(bytes: &[u8]) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
    bytes.chunks_exact(RECORD).map(|r| {
        let mut k = [0u8; 8];
        let mut o = [0u8; 8];
        k.copy_from_slice(&r[..8]);
        o.copy_from_slice(&r[8..]);
        let (key, offset) = (u64::from_le_bytes(k), u64::from_le_bytes(o));
        (key, offset & !FAILURE, offset & FAILURE == 0)
    })
}

/// What opening found in one segment.
pub(super) struct Indexed {
    pub(super) results: Vec<(u64, u64)>,
    pub(super) failures: Vec<u64>,
    /// Bytes of the index taken in (whole records).
    pub(super) read: u64,
    /// The index built by scanning, when the segment had none.
    pub(super) built: Option<Vec<u8>>,
}

/// Two lists sorted by key, merged into one.
pub(super) fn merge_sorted(a: Vec<(u64, u64)>, b: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        if x.0 <= y.0 {
            out.extend(a.next());
        } else {
            out.extend(b.next());
        }
    }
    out.extend(a);
    out.extend(b);
    out
}

/// The entries of a segment's index from byte `from` on (streamed: a torn last record is
/// ignored).
pub(super) async fn read_index(
    store: &RunStore,
    name: &str,
    segment: u32,
    from: u64,
) -> Result<Indexed> {
    let mut found = Indexed {
        results: vec![],
        failures: vec![],
        read: from,
        built: None,
    };
    let mut chunks = store.get_stream(&format!("{name}.idx"), from).await?;
    let mut carry: Vec<u8> = vec![];
    while let Some(chunk) = chunks.next().await {
        carry.extend_from_slice(&chunk?);
        let whole = carry.len() - carry.len() % RECORD;
        found.read += whole as u64;
        for (key, offset, ok) in index_records(&carry[..whole]) {
            if ok {
                found.results.push((key, location(segment, offset)));
            } else {
                found.failures.push(key);
            }
        }
        carry.drain(..whole);
    }
    Ok(found)
}

/// Index a segment that has no index by reading it (streamed).
pub(super) async fn scan_segment(store: &RunStore, name: &str, segment: u32) -> Result<Indexed> {
    let mut found = Indexed {
        results: vec![],
        failures: vec![],
        read: 0,
        built: Some(vec![]),
    };
    let mut built = vec![];
    let mut chunks = store.get_stream(&format!("{name}.jsonl"), 0).await?;
    let mut lines = Lines::default();
    while let Some(chunk) = chunks.next().await {
        lines.feed(&chunk?, |offset, raw| match line_key(raw) {
            Some((key, ok)) => {
                built.extend_from_slice(&index_record(key, offset, ok));
                if ok {
                    found.results.push((key, location(segment, offset)));
                } else {
                    found.failures.push(key);
                }
            }
            // A torn line (a crash mid-write) is skipped, and said.
            None if !raw.is_empty() => tracing::warn!(
                "journal {name}: skipped an unreadable line ({} bytes)",
                raw.len()
            ),
            None => {}
        });
    }
    if !lines.carry.is_empty() {
        tracing::warn!(
            "journal {name}: skipped an unreadable last line ({} bytes)",
            lines.carry.len()
        );
    }
    found.read = built.len() as u64;
    found.built = Some(built);
    Ok(found)
}
