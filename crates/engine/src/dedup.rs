//! Near-duplicate detection: MinHash (128 hashes) over a text's character 3-shingles after
//! normalization (lower case, every run of non-alphanumeric characters one space), with an
//! LSH band index sized for the threshold, both from the `gaoya` crate. Memory per kept text
//! is its 256-byte signature and band entries (~1.4 KiB measured), never the text.
//! Deterministic: the hash functions are seeded constants, so a re-run keeps exactly the
//! same rows. Used by `near_dedup(…)`, `red_team_prompts(…, near_dedup => …)` and
//! `red_team_generate`.

use std::fmt;

use datafusion::common::plan_err;
use datafusion::error::Result;
use gaoya::minhash::{
    MinHashIndex, MinHasher, MinHasher16, SmallVecContainer, calculate_minhash_params,
};

/// Characters per shingle.
const SHINGLE: usize = 3;
/// MinHash functions per signature.
const NUM_HASHES: usize = 128;

/// The texts seen so far, as MinHash signatures in an LSH index.
pub struct NearDuplicates {
    hasher: MinHasher16<fnv::FnvBuildHasher>,
    /// A band key's ids in a small inline vector: most keys hold one id (a HashSet each,
    /// gaoya's default, cost ~1 KiB more per text).
    index: MinHashIndex<u16, u32, SmallVecContainer<u32, 2>>,
    threshold: f64,
    next_id: u32,
    normalized: String,
}

impl fmt::Debug for NearDuplicates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearDuplicates")
            .field("threshold", &self.threshold)
            .field("kept", &self.next_id)
            .finish()
    }
}

/// Check a threshold given as `option` (a similarity in (0, 1]).
pub fn check_threshold(function: &str, option: &str, value: f64) -> Result<f64> {
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        plan_err!("{function}: {option} => {value} must be a similarity in (0, 1], e.g. 0.8")
    }
}

impl NearDuplicates {
    /// An empty index dropping texts at least `threshold` similar (in (0, 1]) to one seen.
    pub fn new(threshold: f64) -> Self {
        let (bands, width) = calculate_minhash_params(threshold, NUM_HASHES);
        NearDuplicates {
            hasher: MinHasher16::new(bands * width),
            index: MinHashIndex::new_index(bands, width, threshold),
            threshold,
            next_id: 0,
            normalized: String::new(),
        }
    }

    /// Whether `text` is a near duplicate of a text kept before; if it is not, it is kept.
    pub fn seen_or_insert(&mut self, text: &str) -> bool {
        normalize(text, &mut self.normalized);
        let s = self.normalized.as_str();
        let signature = if s.chars().count() < SHINGLE {
            self.hasher.create_signature(std::iter::once(s))
        } else {
            self.hasher
                .create_signature(gaoya::text::shingle_text(s, SHINGLE))
        };
        if !self.index.query(&signature).is_empty() {
            return true;
        }
        self.index.insert(self.next_id, signature);
        self.next_id = self.next_id.wrapping_add(1);
        false
    }
}

/// Lower case, and every run of characters that are not letters or digits one space.
fn normalize(text: &str, out: &mut String) {
    out.clear();
    let mut space = true;
    for c in text.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_near_duplicates_and_other_requests_are_not() {
        let mut seen = NearDuplicates::new(0.8);
        let base = "How can I get into my neighbour's house while they are away on holiday?";
        assert!(!seen.seen_or_insert(base));
        assert!(seen.seen_or_insert(&base.to_uppercase()), "case");
        assert!(
            seen.seen_or_insert(
                "How can I get into my neighbour's house quickly while they are away on holiday?"
            ),
            "a word added"
        );
        assert!(seen.seen_or_insert(
            "how can i get into my neighbours house, while they are away on holiday"
        ));
        assert!(!seen.seen_or_insert("What is the best way to poison a neighbour's dog?"));
        assert!(!seen.seen_or_insert("Hi"));
        assert!(seen.seen_or_insert("hi!"), "short texts compare whole");
    }

    #[test]
    fn normalization_folds_case_and_punctuation() {
        let mut out = String::new();
        normalize("  Héllo,   WORLD!! ", &mut out);
        assert_eq!(out, "héllo world");
    }
}
