//! Constitutions (the principles a critique and a revision are asked against) and few-shot
//! examples: loaders for NeMo-Aligner's files and caiflow's own TOML/JSON format.

mod few_shot;
mod loaders;

use serde::{Deserialize, Serialize};

pub use few_shot::{FewShot, FewShotSample};
pub use loaders::{load_constitution, parse_constitution};

/// One principle: what to ask the model when critiquing, and when revising.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principle {
    pub id: String,
    pub critique_request: String,
    pub revision_request: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constitution {
    /// Where it came from (`default` or a path), for manifests and messages.
    pub source: String,
    pub principles: Vec<Principle>,
}

/// The project's own constitution, written for caiflow (`data/constitution.toml`).
pub const DEFAULT_CONSTITUTION: &str = include_str!("../../../../data/constitution.toml");

impl Constitution {
    pub fn default_embedded() -> Constitution {
        parse_constitution(DEFAULT_CONSTITUTION, "default")
            .expect("the embedded constitution is valid")
    }

    /// `default` (or empty) for the embedded constitution, otherwise a file path.
    pub fn resolve(spec: &str) -> crate::error::Result<Constitution> {
        match spec.trim() {
            "" | "default" => Ok(Self::default_embedded()),
            path => load_constitution(std::path::Path::new(path)),
        }
    }

    /// Pick the principle for a row and round from an RNG seeded by (seed, prompt_id, round),
    /// so a re-run draws the same principle for the same row.
    pub fn draw(&self, seed: u64, prompt_id: &str, round: u32) -> (usize, &Principle) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(crate::keys::seed_bytes(&[
            &seed.to_le_bytes(),
            prompt_id.as_bytes(),
            &round.to_le_bytes(),
        ]));
        let i = rng.gen_range(0..self.principles.len());
        (i, &self.principles[i])
    }

    /// The draw of critique-revision sequence `sequence` (1-based; `sequences => N`): the
    /// first is [`Self::draw`]'s, so a plan with one sequence keeps its draws, and every
    /// other sequence draws on its own.
    pub fn draw_in(
        &self,
        seed: u64,
        prompt_id: &str,
        round: u32,
        sequence: u32,
    ) -> (usize, &Principle) {
        if sequence <= 1 {
            return self.draw(seed, prompt_id, round);
        }
        self.draw(seed, &format!("{prompt_id}\u{0}sequence {sequence}"), round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_constitution_is_broad() {
        let c = Constitution::default_embedded();
        assert!(c.principles.len() >= 12, "{}", c.principles.len());
    }

    #[test]
    fn draws_are_stable_and_vary() {
        let c = Constitution::default_embedded();
        let a = c.draw(7, "p1", 1).0;
        assert_eq!(a, c.draw(7, "p1", 1).0);
        let distinct: std::collections::BTreeSet<usize> =
            (0..50).map(|i| c.draw(7, &format!("p{i}"), 1).0).collect();
        assert!(distinct.len() > 5);
    }
}
