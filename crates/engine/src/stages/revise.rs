//! `revise(input, rounds => N, …)`: the model rewrites its response to address the critique.
//!
//! With `rounds => N > 1` (the CAI paper uses 4) the stage goes on in the same conversation:
//! a new principle is drawn, the latest revision is critiqued and revised again. It emits one
//! row per round (`round` = 1..N), since the paper trains on every revision. NeMo-Aligner
//! does one round, the default.
//!
//! - Each input row is one critique-revision sequence: its `sequence` (from `critique(…,
//!   sequences => N)`, else 1) keys the later rounds' principle draws and seeds.
//! - `critique => false` (the paper's §3.5 ablation): no critique at all; each round asks
//!   for the revision directly, one request per row and round. The input needs only the
//!   response; `sequences => N` then makes the N sequences here.
//! - `target => 'reasoning'`: the thinking (`response_reasoning`) is critiqued and
//!   rewritten; `revision` is the rewritten thinking.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::plan_err;
use datafusion::error::Result;

use super::critique::{Target, load_constitution, parse_sequences, sequence_key};
use crate::constitution::{Constitution, Principle};
use crate::output_row;
use crate::parse::harm::parse_harm_verdicts;
use crate::stage::{
    Emit, InputRow, Lineage, Llm, LlmOptions, LlmStage, Missing, StageArgs, base_turns,
};
use caiflow_llm::Message;

output_row! {
    /// One round: its critique (as `critique` emits it, for rounds after the first made
    /// here) and the revision.
    pub struct RoundRow {
        round: Option<u32>,
        sequence: Option<u32>,
        target: Option<String>,
        principle_id: Option<String>,
        critique_request: Option<String>,
        critique: Option<String>,
        critique_reasoning: Option<String>,
        critique_lineage: Option<Lineage>,
        thinking_harmful: Option<bool>,
        answer_harmful: Option<bool>,
        revision_request: Option<String>,
        revision: Option<String>,
    }
}

#[derive(Debug)]
pub struct Revise {
    options: LlmOptions,
    constitution: Arc<Constitution>,
    rounds: u32,
    /// Critique before each revision (`critique => false`: revise directly).
    critique: bool,
    /// Sequences made here (`critique => false` only; else one per input row).
    sequences: u32,
    target: Target,
}

/// The critique a round's revision answers.
#[derive(Clone, Default)]
struct Critiqued {
    request: Option<String>,
    text: Option<String>,
    reasoning: Option<String>,
    lineage: Option<Lineage>,
}

impl Revise {
    /// The first round's number: the input's `round` (a critique's), else 1.
    fn first_round(row: &InputRow) -> u32 {
        row.u64("round").map(|r| r as u32).unwrap_or(1)
    }

    /// The row's sequence (`critique(…, sequences => N)`), else 1.
    fn sequence_of(row: &InputRow) -> u32 {
        row.u64("sequence")
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(1)
    }

    fn row(&self, round: u32, sequence: u32, principle: Option<&Principle>) -> RoundRow {
        RoundRow {
            round: Some(round),
            sequence: Some(sequence),
            target: Some(self.target.name().to_string()),
            principle_id: principle.map(|p| p.id.clone()),
            ..Default::default()
        }
    }

    /// One critique-revision sequence over `rounds` rounds.
    async fn sequence(
        &self,
        llm: &Llm<'_>,
        prompt_id: &str,
        mut turns: Vec<Message>,
        first_round: u32,
        sequence: u32,
        first: Option<(&Principle, Critiqued)>,
    ) -> Vec<Emit<RoundRow>> {
        let seq_bytes = sequence.to_le_bytes();
        let mut out = vec![];
        for round in first_round..first_round.saturating_add(self.rounds) {
            let round_bytes = round.to_le_bytes();
            let (principle, critiqued) = match (&first, round == first_round) {
                (Some((p, c)), true) => (*p, c.clone()),
                _ => {
                    let p = self
                        .constitution
                        .draw_in(self.options.seed, prompt_id, round, sequence)
                        .1;
                    (p, Critiqued::default())
                }
            };
            let mut done = self.row(round, sequence, Some(principle));
            let critiqued = if self.critique && round > first_round {
                // A new principle for each further round, critiquing the latest revision.
                let request = self.target.critique_request(principle);
                turns.push(Message::user(&request));
                let key = sequence_key(
                    &[b"critique", prompt_id.as_bytes(), &round_bytes],
                    &seq_bytes,
                );
                let reply = llm.call(&self.options.request(turns.clone(), &key)).await;
                match reply.result {
                    Ok(c) => {
                        turns.push(Message::assistant(&c));
                        Critiqued {
                            request: Some(request),
                            text: Some(c),
                            reasoning: reply.reasoning,
                            lineage: reply.lineage,
                        }
                    }
                    Err(e) => {
                        done.critique_request = Some(request);
                        done.critique_lineage = reply.lineage;
                        let error = format!("critique (round {round}): {e}");
                        out.push(Emit::failed(done, None, error));
                        break;
                    }
                }
            } else {
                critiqued
            };
            if let (Target::Reasoning, Some(text)) = (self.target, &critiqued.text) {
                (done.thinking_harmful, done.answer_harmful) = parse_harm_verdicts(text);
            }
            done.critique_request = critiqued.request;
            done.critique = critiqued.text;
            done.critique_reasoning = critiqued.reasoning;
            done.critique_lineage = critiqued.lineage;
            let revision_request = self.target.revision_request(principle);
            turns.push(Message::user(&revision_request));
            done.revision_request = Some(revision_request);
            let key = sequence_key(&[b"revise", prompt_id.as_bytes(), &round_bytes], &seq_bytes);
            let reply = llm.call(&self.options.request(turns.clone(), &key)).await;
            match reply.result {
                Ok(revision) => {
                    turns.push(Message::assistant(&revision));
                    done.revision = Some(revision);
                    out.push(Emit::ok(done, reply.lineage).with_reasoning(reply.reasoning));
                }
                Err(e) => {
                    let error = format!("revise (round {round}): {e}");
                    out.push(Emit::failed(done, reply.lineage, error));
                    break;
                }
            }
        }
        out
    }

    async fn rounds(&self, row: &InputRow, llm: &Llm<'_>) -> Result<Vec<Emit<RoundRow>>, Missing> {
        let first_round = Self::first_round(row);
        let (Some(prompt_id), Some(mut turns)) = (row.str("prompt_id"), base_turns(row)) else {
            return Err(Missing("prompt"));
        };
        turns.push(Message::assistant(self.target.shown(row)?));
        if !self.critique {
            let calls = (1..=self.sequences)
                .map(|s| self.sequence(llm, prompt_id, turns.clone(), first_round, s, None));
            return Ok(futures::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect());
        }
        let sequence = Self::sequence_of(row);
        let critique = row.str("critique").ok_or(Missing("critique"))?;
        let principle_id = row.str("principle_id").unwrap_or_default();
        let Some(principle) = self
            .constitution
            .principles
            .iter()
            .find(|p| p.id == principle_id)
        else {
            let error = format!(
                "revise: principle '{principle_id}' is not in constitution '{}' (give revise the constitution critique used)",
                self.constitution.source
            );
            return Ok(vec![Emit::failed(
                self.row(first_round, sequence, None),
                None,
                error,
            )]);
        };
        let critique_request = row
            .str("critique_request")
            .map_or_else(|| self.target.critique_request(principle), str::to_string);
        turns.push(Message::user(&critique_request));
        turns.push(Message::assistant(critique));
        let first = Critiqued {
            request: Some(critique_request),
            text: Some(critique.to_string()),
            reasoning: row.str("critique_reasoning").map(str::to_string),
            lineage: row.lineage("critique_lineage"),
        };
        Ok(self
            .sequence(
                llm,
                prompt_id,
                turns,
                first_round,
                sequence,
                Some((principle, first)),
            )
            .await)
    }
}

#[async_trait]
impl LlmStage for Revise {
    const NAME: &'static str = "revise";
    type Row = RoundRow;

    fn build(args: &StageArgs, _input: &Schema) -> Result<Self> {
        let rounds = args.parsed_or("rounds", 1u32)?;
        args.check("rounds", rounds, (1..=16).contains(&rounds), "1 to 16")?;
        let critique = args.bool_or("critique", true)?;
        let sequences = parse_sequences(args)?;
        if critique && sequences > 1 {
            return plan_err!(
                "revise: sequences => {sequences} needs critique => false; with critiques, give sequences to critique(…) and revise follows each of them"
            );
        }
        Ok(Revise {
            options: LlmOptions::parse(args)?,
            constitution: load_constitution(args)?,
            rounds,
            critique,
            sequences,
            target: Target::parse(args)?,
        })
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn output(&self) -> &str {
        "revision"
    }
    fn required_columns(&self) -> Vec<&'static str> {
        let mut columns = vec!["prompt_id", "prompt"];
        columns.extend(self.target.columns());
        if self.critique {
            columns.extend(["principle_id", "critique"]);
        }
        columns
    }
    fn priority(&self) -> u32 {
        2
    }
    fn skipped(&self, row: &InputRow) -> Vec<RoundRow> {
        let first = Self::first_round(row);
        if self.critique {
            return vec![self.row(first, Self::sequence_of(row), None)];
        }
        (1..=self.sequences)
            .map(|s| self.row(first, s, None))
            .collect()
    }
    async fn process(&self, row: &InputRow, llm: &Llm<'_>) -> Result<Vec<Emit<RoundRow>>, Missing> {
        self.rounds(row, llm).await
    }
}
