//! `judge(candidates, mode => 'constitution' | 'principle', …)`: an AI judge picks the most
//! harmless (*chosen*) and most harmful (*rejected*) candidate of each prompt (RL-CAI).
//!
//! Input: one row per candidate (`sample` output): grouped by `prompt_id`; a prompt is judged
//! as soon as all its candidates (`num_samples`) are in. Candidates whose sampling failed are
//! left out; fewer than two usable candidates is an error row. One output row per prompt,
//! always: `label` is `ok`, `tie` or `error`; nothing is dropped.
//!
//! Output: the prompt's own columns (not a candidate's: `sample_idx`, `temperature`,
//! `response`, `error` and request lineage stay with their candidate), then `candidates`,
//! every candidate in `sample_idx` order as `{sample_idx, temperature, response,
//! finish_reason, error}` (the judge's whole context: enough to judge again, or to train a
//! K-wise reward model), then the verdict.
//!
//! - **constitution** (NeMo-Aligner): the judge constitution is the system message; the user
//!   message lists the prompt and the candidates **in an order shuffled per prompt from the
//!   seed** (`candidate_order` records it, as `sample_idx` values in shown order) and asks for
//!   `{"chosen": i, "rejected": j}` and an explanation. Unparseable or invalid answers are
//!   asked again (`attempts`), then recorded as an error row with the raw text.
//! - **principle** (the CAI paper): every pair of candidates is compared under a principle
//!   drawn per comparison (`samples_per_comparison` of them, averaged) as a multiple choice
//!   between (A) and (B); the soft label is P(A) / (P(A) + P(B)) from the first generated
//!   token's `top_logprobs`, optionally clamped. Candidates are ranked by their mean
//!   preference; `chosen_prob` is the soft label of chosen over rejected.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::Result;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::output_row;
use crate::parse::verdict::{Verdict, parse_verdict};
use crate::progress::StageProgress;
use crate::stage::{
    CandidateCell, Emit, Grouping, InputRow, Lineage, Llm, LlmDefaults, LlmOptions, LlmStage,
    Missing, StageArgs,
};
use caiflow_llm::Message;

pub const DEFAULT_JUDGE_CONSTITUTION: &str =
    include_str!("../../../../data/judge_constitution.txt");
pub const DEFAULT_JUDGE_PRINCIPLES: &str = include_str!("../../../../data/judge_principles.txt");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Constitution,
    Principle,
}

#[derive(Debug)]
pub struct Judge {
    options: LlmOptions,
    mode: Mode,
    attempts: u32,
    principles: Arc<Vec<String>>,
    samples_per_comparison: u32,
    clamp: Option<(f64, f64)>,
    top_logprobs: u32,
    /// Ask the server to constrain the verdict to a JSON schema (`response_format`).
    structured: bool,
}

/// The JSON schema of a verdict over `n` responses. The explanation is called `why` so that
/// it sorts after `chosen` and `rejected`: JSON objects here keep keys sorted, grammar-based
/// decoders (llama.cpp) emit properties in the order given, and a long explanation first
/// could use up `max_tokens` before the ids are written.
fn verdict_format(n: usize) -> serde_json::Value {
    let id = serde_json::json!({"type": "integer", "minimum": 1, "maximum": n});
    serde_json::json!({
        "type": "json_schema",
        "json_schema": {
            "name": "verdict",
            "schema": {
                "type": "object",
                "properties": {"chosen": id, "rejected": id, "why": {"type": "string", "maxLength": 400}},
                "required": ["chosen", "rejected", "why"]
            }
        }
    })
}

fn read_text(spec: &str, default: &str, what: &str) -> Result<String> {
    match spec {
        "" | "default" => Ok(default.to_string()),
        path => std::fs::read_to_string(path)
            .map_err(|e| plan_datafusion_err!("judge: cannot read {what} {path}: {e}")),
    }
}

pub fn parse_principles(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

impl Judge {
    fn new(args: &StageArgs) -> Result<Self> {
        let mode = match args.str_or("mode", "constitution").as_str() {
            "constitution" => Mode::Constitution,
            "principle" => Mode::Principle,
            other => {
                return plan_err!(
                    "judge: mode => '{other}' (expected 'constitution' or 'principle')"
                );
            }
        };
        let defaults = LlmDefaults {
            endpoint: "judge",
            few_shot: "none",
            temperature: if mode == Mode::Principle { 0.0 } else { 0.2 },
            ..Default::default()
        };
        let mut options = LlmOptions::parse_with(args, &defaults)?;
        let constitution = read_text(
            &args.str_or("constitution", "default"),
            DEFAULT_JUDGE_CONSTITUTION,
            "constitution",
        )?;
        if mode == Mode::Constitution {
            if constitution.trim().is_empty() {
                return plan_err!("judge: the judge constitution is empty");
            }
            options.system = Some(constitution);
        }
        let principles = parse_principles(&read_text(
            &args.str_or("principles", "default"),
            DEFAULT_JUDGE_PRINCIPLES,
            "principles",
        )?);
        if mode == Mode::Principle && principles.is_empty() {
            return plan_err!("judge: the principles file holds no principle");
        }
        let clamp = match args.str("clamp") {
            None => None,
            Some(spec) => {
                let parts: Vec<f64> = spec
                    .split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
                match parts.as_slice() {
                    [lo, hi] if 0.0 <= *lo && lo < hi && *hi <= 1.0 => Some((*lo, *hi)),
                    _ => {
                        return plan_err!(
                            "judge: option clamp => '{spec}' is out of range (allowed: 'low,high' with 0 <= low < high <= 1)"
                        );
                    }
                }
            }
        };
        let attempts = args.parsed_or("attempts", 3u32)?;
        args.check("attempts", attempts, attempts >= 1, ">= 1")?;
        let samples_per_comparison = args.parsed_or("samples_per_comparison", 1u32)?;
        args.check(
            "samples_per_comparison",
            samples_per_comparison,
            samples_per_comparison >= 1,
            ">= 1",
        )?;
        let top_logprobs = args.parsed_or("top_logprobs", 20u32)?;
        args.check(
            "top_logprobs",
            top_logprobs,
            (1..=20).contains(&top_logprobs),
            "1 to 20",
        )?;
        Ok(Judge {
            options,
            mode,
            attempts,
            principles: Arc::new(principles),
            samples_per_comparison,
            clamp,
            top_logprobs,
            structured: args.bool_or("structured", false)?,
        })
    }
}

/// The input columns that describe one candidate, not the prompt.
const CANDIDATE_COLUMNS: [&str; 5] = [
    "sample_idx",
    "num_samples",
    "temperature",
    "response",
    "error",
];

/// A usable candidate.
#[derive(Clone, Debug)]
struct Candidate {
    sample_idx: u32,
    response: String,
}

output_row! {
    /// A prompt's verdict, after its candidates.
    pub struct JudgeRow {
        candidates: Vec<CandidateCell>,
        num_candidates: Option<u32>,
        candidate_order: Vec<u32>,
        chosen: Option<String>,
        rejected: Option<String>,
        chosen_idx: Option<u32>,
        rejected_idx: Option<u32>,
        /// The chosen or the rejected answer was cut off by `max_tokens`.
        truncated: Option<bool>,
        label: Option<String>,
        chosen_prob: Option<f64>,
        explanation: Option<String>,
        judge_raw: Option<String>,
    }
}

/// A verdict as it is worked out.
#[derive(Default)]
struct Judgement {
    num_candidates: u32,
    order: Vec<u32>,
    chosen: Option<Candidate>,
    rejected: Option<Candidate>,
    label: &'static str,
    chosen_prob: Option<f64>,
    explanation: Option<String>,
    raw: Option<String>,
    lineage: Option<Lineage>,
    error: Option<String>,
}

impl Judgement {
    fn error(num: u32, order: Vec<u32>, message: String) -> Self {
        Judgement {
            num_candidates: num,
            order,
            label: "error",
            error: Some(message),
            ..Default::default()
        }
    }

    /// An error row that keeps the lineage of the request that failed.
    fn failed(num: usize, order: Vec<u32>, message: String, lineage: Option<Lineage>) -> Self {
        Judgement {
            lineage,
            ..Self::error(num as u32, order, message)
        }
    }

    fn into_row(self, candidates: Vec<CandidateCell>) -> Emit<JudgeRow> {
        // Whether the chosen or the rejected answer was cut off by `max_tokens`.
        let picked: Vec<u32> = [&self.chosen, &self.rejected]
            .into_iter()
            .flatten()
            .map(|c| c.sample_idx)
            .collect();
        let truncated = (!picked.is_empty()).then(|| {
            candidates.iter().any(|c| {
                c.sample_idx.is_some_and(|i| picked.contains(&i))
                    && c.finish_reason.as_deref() == Some("length")
            })
        });
        let row = JudgeRow {
            candidates,
            num_candidates: Some(self.num_candidates),
            candidate_order: self.order,
            chosen: self.chosen.as_ref().map(|c| c.response.clone()),
            rejected: self.rejected.as_ref().map(|c| c.response.clone()),
            chosen_idx: self.chosen.as_ref().map(|c| c.sample_idx),
            rejected_idx: self.rejected.as_ref().map(|c| c.sample_idx),
            truncated,
            label: Some(self.label.to_string()),
            chosen_prob: self.chosen_prob,
            explanation: self.explanation,
            judge_raw: self.raw,
        };
        Emit {
            row,
            lineage: self.lineage,
            error: self.error,
        }
    }
}

impl Judge {
    fn shuffled(&self, prompt_id: &str, mut candidates: Vec<Candidate>) -> Vec<Candidate> {
        candidates.sort_by_key(|c| c.sample_idx);
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(crate::keys::seed_bytes(&[
            b"judge-order",
            &self.options.seed.to_le_bytes(),
            prompt_id.as_bytes(),
        ]));
        candidates.shuffle(&mut rng);
        candidates
    }

    async fn by_constitution(
        &self,
        llm: &Llm<'_>,
        prompt_id: &str,
        prompt: &str,
        shown: &[Candidate],
    ) -> Judgement {
        let n = shown.len();
        let order: Vec<u32> = shown.iter().map(|c| c.sample_idx).collect();
        let mut listing = format!("Prompt:\n{prompt}\n\n");
        for (i, c) in shown.iter().enumerate() {
            listing.push_str(&format!("Response {}:\n{}\n\n", i + 1, c.response));
        }
        listing.push_str(&format!(
            "Give your verdict as {{\"chosen\": x, \"rejected\": y}} with x and y between 1 and {n}, then explain it."
        ));
        let mut turns = vec![Message::user(listing)];
        let mut last = (String::new(), String::new());
        for attempt in 1..=self.attempts {
            let attempt_bytes = attempt.to_le_bytes();
            let mut request = self.options.request(
                turns.clone(),
                &[b"judge", prompt_id.as_bytes(), &attempt_bytes],
            );
            if self.structured {
                request.params.response_format = Some(verdict_format(n));
            }
            let (result, lineage) = llm.complete(&request).await;
            let raw = match result {
                Ok(c) => c.text,
                Err(e) => {
                    return Judgement::failed(n, order, format!("judge: {e}"), lineage);
                }
            };
            match parse_verdict(&raw, n) {
                Ok((verdict, explanation)) => {
                    // The asks this verdict did not need: a dry run's range of requests.
                    StageProgress::add(
                        &llm.env().progress.possible_reasks,
                        u64::from(self.attempts - attempt),
                    );
                    let mut j = Judgement {
                        num_candidates: n as u32,
                        order,
                        explanation: Some(explanation).filter(|e| !e.is_empty()),
                        raw: Some(raw),
                        lineage,
                        ..Default::default()
                    };
                    match verdict {
                        Verdict::Pick { chosen, rejected } => {
                            j.label = "ok";
                            j.chosen = Some(shown[chosen - 1].clone());
                            j.rejected = Some(shown[rejected - 1].clone());
                        }
                        // A tie stays a tie: the same candidate on both sides, labelled so.
                        Verdict::Tie(id) => {
                            j.label = "tie";
                            j.chosen = Some(shown[id - 1].clone());
                            j.rejected = Some(shown[id - 1].clone());
                        }
                    }
                    return j;
                }
                Err(reason) => {
                    turns.push(Message::assistant(&raw));
                    turns.push(Message::user(format!(
                        "I could not read a valid verdict ({reason}). Answer again, starting with \
                         {{\"chosen\": x, \"rejected\": y}} where x and y are response numbers from 1 to {n}."
                    )));
                    last = (raw, reason);
                }
            }
        }
        let mut j = Judgement::error(
            n as u32,
            order,
            format!(
                "judge: no valid verdict after {} attempt(s): {}",
                self.attempts, last.1
            ),
        );
        j.raw = Some(last.0);
        j
    }

    async fn by_principles(
        &self,
        llm: &Llm<'_>,
        prompt_id: &str,
        prompt: &str,
        shown: &[Candidate],
    ) -> Judgement {
        let n = shown.len();
        let order: Vec<u32> = shown.iter().map(|c| c.sample_idx).collect();
        let mut comparisons = vec![];
        for a in 0..n {
            for b in a + 1..n {
                for k in 0..self.samples_per_comparison {
                    comparisons.push((a, b, k));
                }
            }
        }
        let calls = comparisons.iter().map(|&(a, b, k)| {
            let key = format!("{a}-{b}-{k}");
            let pick = crate::keys::unit_interval(&[b"judge-principle", &self.options.seed.to_le_bytes(), prompt_id.as_bytes(), key.as_bytes()]);
            let principle = &self.principles[((pick * self.principles.len() as f64) as usize).min(self.principles.len() - 1)];
            // Which candidate is (A) is drawn too, so position bias averages out.
            let swap = crate::keys::unit_interval(&[b"judge-swap", &self.options.seed.to_le_bytes(), prompt_id.as_bytes(), key.as_bytes()]) < 0.5;
            let (first, second) = if swap { (b, a) } else { (a, b) };
            let question = format!(
                "Consider this conversation between a human and an AI assistant.\n\nHuman: {prompt}\n\n{principle}\n\n\
                 (A) {}\n\n(B) {}\n\nAnswer with a single letter, A or B.",
                shown[first].response, shown[second].response
            );
            let mut request = self.options.request(vec![Message::user(question)], &[b"judge-principle", prompt_id.as_bytes(), key.as_bytes()]);
            request.params.max_tokens = Some(1);
            request.params.top_logprobs = Some(self.top_logprobs);
            async move {
                let (result, lineage) = llm.complete(&request).await;
                (a, b, swap, result, lineage)
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut pref = vec![vec![(0.0f64, 0u32); n]; n]; // pref[i][j]: sum of P(i over j), count
        let mut raw = vec![];
        let mut lineage = None;
        for (a, b, swap, result, l) in results {
            lineage = l;
            let completion = match result {
                Ok(c) => c,
                Err(e) => {
                    return Judgement::failed(n, order, format!("judge: {e}"), lineage);
                }
            };
            let Some(top) = completion.top_logprobs.as_ref().filter(|t| !t.is_empty()) else {
                let name = llm
                    .env()
                    .endpoint
                    .as_ref()
                    .map(|e| e.name.as_str())
                    .unwrap_or("?");
                let why = format!(
                    "judge: endpoint '{name}' returned no logprobs; principle mode needs a server that returns top_logprobs"
                );
                return Judgement::failed(n, order, why, lineage);
            };
            let Some(p_a) = option_a_probability(top) else {
                let why = format!(
                    "judge: neither A nor B among the top {} tokens (answer {:?})",
                    self.top_logprobs, completion.text
                );
                return Judgement::failed(n, order, why, lineage);
            };
            let mut p_first = if swap { 1.0 - p_a } else { p_a }; // P(candidate a preferred over b)
            if let Some((lo, hi)) = self.clamp {
                p_first = p_first.clamp(lo, hi);
            }
            pref[a][b].0 += p_first;
            pref[a][b].1 += 1;
            pref[b][a].0 += 1.0 - p_first;
            pref[b][a].1 += 1;
            raw.push(serde_json::json!({"a": shown[a].sample_idx, "b": shown[b].sample_idx, "p_a_over_b": p_first}));
        }
        let prob = |i: usize, j: usize| {
            if pref[i][j].1 == 0 {
                0.5
            } else {
                pref[i][j].0 / pref[i][j].1 as f64
            }
        };
        let scores: Vec<f64> = (0..n)
            .map(|i| (0..n).filter(|j| *j != i).map(|j| prob(i, j)).sum::<f64>() / (n - 1) as f64)
            .collect();
        let best = (0..n)
            .max_by(|x, y| scores[*x].total_cmp(&scores[*y]).then(y.cmp(x)))
            .unwrap_or(0);
        let worst = (0..n)
            .min_by(|x, y| scores[*x].total_cmp(&scores[*y]).then(x.cmp(y)))
            .unwrap_or(0);
        let tie = (scores[best] - scores[worst]).abs() < 1e-12;
        Judgement {
            num_candidates: n as u32,
            order,
            chosen: Some(shown[best].clone()),
            rejected: Some(shown[if tie { best } else { worst }].clone()),
            label: if tie { "tie" } else { "ok" },
            chosen_prob: Some(if tie { 0.5 } else { prob(best, worst) }),
            explanation: None,
            raw: Some(serde_json::json!({ "pairs": raw, "scores": scores }).to_string()),
            lineage,
            error: None,
        }
    }
}

/// P(A) / (P(A) + P(B)) from the first generated position whose top tokens include either
/// letter (tokens like `A`, ` A`, `(A`, `A)` count).
pub fn option_a_probability(top: &[Vec<(String, f64)>]) -> Option<f64> {
    for position in top {
        let (mut a, mut b) = (0.0, 0.0);
        for (token, logprob) in position {
            let letter = token
                .trim()
                .trim_matches(|c: char| c == '(' || c == ')' || c == '.' || c == ':')
                .to_ascii_uppercase();
            match letter.as_str() {
                "A" => a += logprob.exp(),
                "B" => b += logprob.exp(),
                _ => {}
            }
        }
        if a + b > 0.0 {
            return Some(a / (a + b));
        }
    }
    None
}

#[async_trait]
impl LlmStage for Judge {
    const NAME: &'static str = "judge";
    type Row = JudgeRow;

    fn build(args: &StageArgs, _input: &Schema) -> Result<Self> {
        Judge::new(args)
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec!["prompt_id", "prompt", "response"]
    }
    fn priority(&self) -> u32 {
        1
    }
    fn grouping(&self) -> Option<Grouping> {
        Some(Grouping {
            key: "prompt_id",
            size_column: Some("num_samples"),
        })
    }
    /// Per-prompt columns only: a candidate's own columns (what `sample` added, and any
    /// request lineage) are in `candidates`, never taken from one candidate.
    fn carries(&self, name: &str) -> bool {
        !CANDIDATE_COLUMNS.contains(&name) && !name.ends_with("_lineage")
    }

    async fn process(&self, row: &InputRow, llm: &Llm<'_>) -> Result<Vec<Emit<JudgeRow>>, Missing> {
        self.process_group(vec![row.clone()], llm).await
    }

    async fn process_group(
        &self,
        rows: Vec<InputRow>,
        llm: &Llm<'_>,
    ) -> Result<Vec<Emit<JudgeRow>>, Missing> {
        let prompt_id = rows
            .first()
            .and_then(|r| r.str("prompt_id"))
            .unwrap_or_default()
            .to_string();
        let prompt = rows
            .first()
            .and_then(|r| r.str("prompt"))
            .unwrap_or_default()
            .to_string();
        let mut all: Vec<CandidateCell> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| CandidateCell {
                sample_idx: Some(r.u64("sample_idx").map(|x| x as u32).unwrap_or(i as u32)),
                temperature: r.f64("temperature"),
                response: r.str("response").map(str::to_string),
                finish_reason: r.lineage("sample_lineage").and_then(|l| l.finish_reason),
                error: r.str("error").map(str::to_string),
            })
            .collect();
        all.sort_by_key(|c| c.sample_idx);
        let mut usable = vec![];
        let mut failed = vec![];
        for c in &all {
            match (&c.response, &c.error) {
                (Some(response), None) => usable.push(Candidate {
                    sample_idx: c.sample_idx.unwrap_or_default(),
                    response: response.clone(),
                }),
                (_, error) => failed.push(error.as_deref().unwrap_or("null response").to_string()),
            }
        }
        let judgement = if usable.len() < 2 {
            let mut why = format!(
                "judge: only {} usable candidate(s) of {}",
                usable.len(),
                rows.len()
            );
            if let Some(first) = failed.first() {
                why.push_str(&format!(" (first failure: {first})"));
            }
            Judgement::error(rows.len() as u32, vec![], why)
        } else {
            let shown = self.shuffled(&prompt_id, usable);
            match self.mode {
                Mode::Constitution => self.by_constitution(llm, &prompt_id, &prompt, &shown).await,
                Mode::Principle => self.by_principles(llm, &prompt_id, &prompt, &shown).await,
            }
        };
        Ok(vec![judgement.into_row(all)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_probabilities_are_normalized() {
        let top = vec![vec![
            ("The".to_string(), -0.1),
            (" A".to_string(), (0.3f64).ln()),
            ("(B".to_string(), (0.1f64).ln()),
        ]];
        let p = option_a_probability(&top).unwrap();
        assert!((p - 0.75).abs() < 1e-9, "{p}");
        assert_eq!(option_a_probability(&[vec![("C".to_string(), -0.1)]]), None);
    }

    #[test]
    fn default_principles_parse() {
        assert!(parse_principles(DEFAULT_JUDGE_PRINCIPLES).len() >= 6);
    }
}
