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
//! K-wise reward model), then the verdict and `comparisons` (each pairwise comparison made).
//!
//! - **constitution** (NeMo-Aligner, [`constitution`]): the judge constitution is the
//!   system message; the user message lists the prompt and the candidates in an order
//!   shuffled per prompt from the seed (`candidate_order`) and asks for `{"chosen": i,
//!   "rejected": j}`. Unreadable answers are asked again (`attempts`).
//! - **principle** (the CAI paper §4.1, [`principle`]): every pair of candidates is compared
//!   under a principle drawn per comparison as a multiple choice between (A) and (B); the
//!   soft label is P(A) / (P(A) + P(B)) from the answer token's `top_logprobs`.
//!
//! Both modes take `few_shot` (worked comparisons, [`files`]), `cot => true` (the judge
//! reasons step by step before choosing, paper §4.1; principle mode then reads the soft
//! label from a second short request with the reasoning in context, clamped to 0.4-0.6 by
//! default), `turns => 'all'` (the judge sees the whole conversation, not only the last
//! human turn) and `audit => true` (every comparison asked in both orders: position
//! consistency per principle, in `comparisons` and the report).

mod constitution;
pub mod files;
mod principle;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::Result;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use self::files::JudgeFewShot;
use crate::output_row;
use crate::stage::{
    CandidateCell, ComparisonCell, Emit, Grouping, InputRow, Lineage, Llm, LlmDefaults, LlmOptions,
    LlmStage, Missing, StageArgs,
};

pub use principle::option_a_probability;

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
    /// Reason step by step before the choice.
    cot: bool,
    few_shot: Arc<JudgeFewShot>,
    /// Show the whole conversation (`turns => 'all'`), not only the last human turn.
    all_turns: bool,
    /// Ask every comparison in both orders.
    audit: bool,
}

fn parse_clamp(spec: &str) -> Result<(f64, f64)> {
    let parts: Vec<f64> = spec
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    match parts.as_slice() {
        [lo, hi] if 0.0 <= *lo && lo < hi && *hi <= 1.0 => Ok((*lo, *hi)),
        _ => plan_err!(
            "judge: option clamp => '{spec}' is out of range (allowed: 'low,high' with 0 <= low < high <= 1, or 'none')"
        ),
    }
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
            few_shot: None,
            temperature: if mode == Mode::Principle { 0.0 } else { 0.2 },
            ..Default::default()
        };
        let mut options = LlmOptions::parse_with(args, &defaults)?;
        let few_shot = JudgeFewShot::resolve(&args.str_or("few_shot", "none"))
            .map_err(|e| plan_datafusion_err!("judge: {e}"))?;
        let constitution = files::constitution_text(&args.str_or("constitution", "default"))
            .map_err(|e| plan_datafusion_err!("judge: {e}"))?;
        if mode == Mode::Constitution {
            if constitution.trim().is_empty() {
                return plan_err!("judge: the judge constitution is empty");
            }
            options.system = Some(constitution);
        }
        let principles = files::principles(&args.str_or("principles", "default"))
            .map_err(|e| plan_datafusion_err!("judge: {e}"))?;
        if mode == Mode::Principle && principles.is_empty() {
            return plan_err!("judge: the principles file holds no principle");
        }
        let cot = args.bool_or("cot", false)?;
        // The paper clamps CoT probabilities to 40-60 %: reasoning makes them overconfident.
        let clamp = match args.str("clamp") {
            Some("none") => None,
            Some(spec) => Some(parse_clamp(spec)?),
            None if cot => Some((0.4, 0.6)),
            None => None,
        };
        let all_turns = match args.str_or("turns", "last").as_str() {
            "last" => false,
            "all" => true,
            other => return plan_err!("judge: turns => '{other}' (expected 'last' or 'all')"),
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
            cot,
            few_shot: Arc::new(few_shot),
            all_turns,
            audit: args.bool_or("audit", false)?,
        })
    }
}

/// The input columns that describe one candidate, not the prompt.
const CANDIDATE_COLUMNS: [&str; 6] = [
    "sample_idx",
    "num_samples",
    "temperature",
    "response",
    "response_reasoning",
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
        /// Every pairwise comparison made (principle mode; constitution mode with audit).
        comparisons: Vec<ComparisonCell>,
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
    comparisons: Vec<ComparisonCell>,
    lineage: Option<Lineage>,
    reasoning: Option<String>,
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
            comparisons: self.comparisons,
        };
        Emit {
            row,
            lineage: self.lineage,
            error: self.error,
            reasoning: self.reasoning,
        }
    }
}

/// What the judge is shown of the conversation: the last human turn, or every turn.
fn context(row: &InputRow, prompt: &str, all_turns: bool) -> String {
    if all_turns && let Some(turns) = row.messages("conversation").filter(|t| !t.is_empty()) {
        let lines: Vec<String> = turns
            .iter()
            .map(|m| {
                let who = match m.role.as_str() {
                    "assistant" => "Assistant",
                    "system" => "System",
                    _ => "Human",
                };
                format!("{who}: {}", m.content)
            })
            .collect();
        return lines.join("\n\n");
    }
    format!("Human: {prompt}")
}

/// Thinking of several requests, one after the other.
fn join_reasoning(parts: Vec<String>) -> Option<String> {
    (!parts.is_empty()).then(|| parts.join("\n\n---\n\n"))
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
    fn output(&self) -> &str {
        "judge"
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
        let Some(first) = rows.first() else {
            return Ok(vec![]);
        };
        let prompt_id = first.str("prompt_id").unwrap_or_default().to_string();
        let prompt = first.str("prompt").unwrap_or_default();
        let context = context(first, prompt, self.all_turns);
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
                Mode::Constitution => {
                    // The prompt as NeMo-Aligner shows it; the whole conversation on request.
                    let head = if self.all_turns {
                        format!("Conversation:\n{context}")
                    } else {
                        format!("Prompt:\n{prompt}")
                    };
                    self.by_constitution(llm, &prompt_id, &head, &shown).await
                }
                Mode::Principle => self.by_principles(llm, &prompt_id, &context, &shown).await,
            }
        };
        Ok(vec![judgement.into_row(all)])
    }
}
