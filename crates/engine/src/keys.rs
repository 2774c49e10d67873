//! Stable keys and seeds: every "random" choice in caiflow is a hash of the seed and the row's
//! keys, so re-runs and resumes draw the same values on any machine.

use sha2::{Digest, Sha256};

/// 32 bytes from hashing the parts (length-prefixed, so ("ab","c") ≠ ("a","bc")).
pub fn seed_bytes(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// A uniform number in [0, 1) from the parts.
pub fn unit_interval(parts: &[&[u8]]) -> f64 {
    let b = seed_bytes(parts);
    let x = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Collapse whitespace runs and trim, so trivially different copies of a prompt share an id.
pub fn normalize_text(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `prompt_id`: the first 16 hex digits of the SHA-256 of the normalized prompt.
pub fn prompt_id(prompt: &str) -> String {
    let digest = Sha256::digest(normalize_text(prompt).as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_id_ignores_whitespace_noise() {
        assert_eq!(
            prompt_id("How do I  pick\na lock? "),
            prompt_id("How do I pick a lock?")
        );
        assert_ne!(prompt_id("a"), prompt_id("b"));
        assert_eq!(prompt_id("a").len(), 16);
    }

    #[test]
    fn unit_interval_is_in_range_and_spread() {
        let xs: Vec<f64> = (0..1000u32)
            .map(|i| unit_interval(&[&i.to_le_bytes()]))
            .collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below = xs.iter().filter(|x| **x < 0.5).count();
        assert!((400..600).contains(&below));
    }
}
