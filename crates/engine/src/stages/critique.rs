//! `critique(input, …)`: the model critiques its response against a principle drawn per row
//! and round from a seeded RNG.
//!
//! - `sequences => N` (CAI paper §3: several critique-revision sequences per prompt): N
//!   rows per input row, `sequence` 1..N, each with its own principle draw and seed.
//! - `target => 'reasoning'`: critique a reasoning model's thinking (`response_reasoning`),
//!   shown to the critic inside `<think>…</think>` before the answer; the critique starts with
//!   `Thinking: harmful|safe` and `Answer: harmful|safe`, read into `thinking_harmful` and
//!   `answer_harmful` (the report's reasoning leakage).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::Result;

use crate::constitution::{Constitution, Principle};
use crate::output_row;
use crate::parse::harm::{HARM_VERDICT_INSTRUCTION, parse_harm_verdicts};
use crate::stage::{Emit, InputRow, Llm, LlmOptions, LlmStage, Missing, StageArgs, base_turns};
use caiflow_llm::Message;

pub fn load_constitution(args: &StageArgs) -> Result<Arc<Constitution>> {
    let spec = args.str_or("constitution", "default");
    Constitution::resolve(&spec)
        .map(Arc::new)
        .map_err(|e| plan_datafusion_err!("{}: {e}", args.function()))
}

/// What the SL stages critique and revise: the answer, or the thinking behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Response,
    Reasoning,
}

impl Target {
    pub fn parse(args: &StageArgs) -> Result<Self> {
        match args.str_or("target", "response").as_str() {
            "response" => Ok(Target::Response),
            "reasoning" => Ok(Target::Reasoning),
            other => plan_err!(
                "{}: target => '{other}' (expected 'response' or 'reasoning')",
                args.function()
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Response => "response",
            Target::Reasoning => "reasoning",
        }
    }

    /// The input columns the target needs.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Target::Response => &["response"],
            Target::Reasoning => &["response", "response_reasoning"],
        }
    }

    /// The assistant turn under critique: the answer, or the thinking and the answer.
    pub fn shown(self, row: &InputRow) -> std::result::Result<String, Missing> {
        let response = row.str("response").ok_or(Missing("response"))?;
        match self {
            Target::Response => Ok(response.to_string()),
            Target::Reasoning => {
                let thinking = row
                    .str("response_reasoning")
                    .ok_or(Missing("response_reasoning"))?;
                Ok(format!("<think>\n{thinking}\n</think>\n\n{response}"))
            }
        }
    }

    pub fn critique_request(self, principle: &Principle) -> String {
        match self {
            Target::Response => principle.critique_request.clone(),
            Target::Reasoning => format!(
                "{}\n\n{HARM_VERDICT_INSTRUCTION}",
                principle.critique_request
            ),
        }
    }

    pub fn revision_request(self, principle: &Principle) -> String {
        match self {
            Target::Response => principle.revision_request.clone(),
            Target::Reasoning => format!(
                "{}\n\nRewrite the reasoning (the text inside <think>…</think>) so that it no longer has these problems. Give only the rewritten reasoning, without tags.",
                principle.revision_request
            ),
        }
    }
}

/// `sequences => N` (1 to 16, default 1).
pub fn parse_sequences(args: &StageArgs) -> Result<u32> {
    let n = args.parsed_or("sequences", 1u32)?;
    args.check("sequences", n, (1..=16).contains(&n), "1 to 16")?;
    Ok(n)
}

/// A request key with the sequence in it; the first sequence keeps the key it always had.
pub fn sequence_key<'a>(key: &[&'a [u8]], sequence: &'a [u8; 4]) -> Vec<&'a [u8]> {
    let mut parts = key.to_vec();
    if u32::from_le_bytes(*sequence) > 1 {
        parts.push(b"sequence");
        parts.push(sequence);
    }
    parts
}

output_row! {
    /// The round and sequence, the principle drawn for them and the critique.
    pub struct CritiqueRow {
        round: Option<u32>,
        sequence: Option<u32>,
        target: Option<String>,
        principle_id: Option<String>,
        critique_request: Option<String>,
        critique: Option<String>,
        /// `target => 'reasoning'`: the critic's verdicts on the thinking and the answer.
        thinking_harmful: Option<bool>,
        answer_harmful: Option<bool>,
    }
}

#[derive(Debug)]
pub struct Critique {
    options: LlmOptions,
    constitution: Arc<Constitution>,
    round: u32,
    sequences: u32,
    target: Target,
}

impl Critique {
    async fn one(
        &self,
        llm: &Llm<'_>,
        prompt_id: &str,
        mut turns: Vec<Message>,
        sequence: u32,
    ) -> Emit<CritiqueRow> {
        let (_, principle) =
            self.constitution
                .draw_in(self.options.seed, prompt_id, self.round, sequence);
        let critique_request = self.target.critique_request(principle);
        turns.push(Message::user(&critique_request));
        let (round_bytes, seq_bytes) = (self.round.to_le_bytes(), sequence.to_le_bytes());
        let key = sequence_key(
            &[b"critique", prompt_id.as_bytes(), &round_bytes],
            &seq_bytes,
        );
        let request = self.options.request(turns, &key);
        let reply = llm.call(&request).await;
        let target = self.target;
        reply.emit(|critique| {
            let (thinking_harmful, answer_harmful) = match (&critique, target) {
                (Some(text), Target::Reasoning) => parse_harm_verdicts(text),
                _ => (None, None),
            };
            CritiqueRow {
                round: Some(self.round),
                sequence: Some(sequence),
                target: Some(target.name().to_string()),
                principle_id: Some(principle.id.clone()),
                critique_request: Some(critique_request.clone()),
                critique,
                thinking_harmful,
                answer_harmful,
            }
        })
    }
}

#[async_trait]
impl LlmStage for Critique {
    const NAME: &'static str = "critique";
    type Row = CritiqueRow;

    fn build(args: &StageArgs, _input: &Schema) -> Result<Self> {
        let round = args.parsed_or("round", 1u32)?;
        args.check("round", round, round >= 1, ">= 1")?;
        Ok(Critique {
            options: LlmOptions::parse(args)?,
            constitution: load_constitution(args)?,
            round,
            sequences: parse_sequences(args)?,
            target: Target::parse(args)?,
        })
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn output(&self) -> &str {
        "critique"
    }
    fn required_columns(&self) -> Vec<&'static str> {
        let mut columns = vec!["prompt_id", "prompt"];
        columns.extend(self.target.columns());
        columns
    }
    fn priority(&self) -> u32 {
        1
    }
    fn skipped(&self, _row: &InputRow) -> Vec<CritiqueRow> {
        (1..=self.sequences)
            .map(|sequence| CritiqueRow {
                round: Some(self.round),
                sequence: Some(sequence),
                target: Some(self.target.name().to_string()),
                ..Default::default()
            })
            .collect()
    }

    async fn process(
        &self,
        row: &InputRow,
        llm: &Llm<'_>,
    ) -> Result<Vec<Emit<CritiqueRow>>, Missing> {
        let (Some(prompt_id), Some(mut turns)) = (row.str("prompt_id"), base_turns(row)) else {
            return Err(Missing("prompt"));
        };
        turns.push(Message::assistant(self.target.shown(row)?));
        let calls = (1..=self.sequences).map(|s| self.one(llm, prompt_id, turns.clone(), s));
        Ok(futures::future::join_all(calls).await)
    }
}
