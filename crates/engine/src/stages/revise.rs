//! `revise(input, rounds => N, …)`: the model rewrites its response to address the critique.
//!
//! With `rounds => N > 1` (the CAI paper uses 4) the stage goes on in the same conversation:
//! a new principle is drawn, the latest revision is critiqued and revised again. It emits one
//! row per round (`round` = 1..N), since the paper trains on every revision. NeMo-Aligner
//! does one round, the default.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::error::Result;

use super::critique::load_constitution;
use crate::constitution::Constitution;
use crate::output_row;
use crate::stage::{
    Emit, InputRow, Lineage, Llm, LlmOptions, LlmStage, Missing, StageArgs, base_turns,
};
use caiflow_llm::Message;

output_row! {
    /// One round: its critique (as `critique` emits it, for rounds after the first made
    /// here) and the revision.
    pub struct RoundRow {
        round: Option<u32>,
        principle_id: Option<String>,
        critique_request: Option<String>,
        critique: Option<String>,
        critique_lineage: Option<Lineage>,
        revision_request: Option<String>,
        revision: Option<String>,
    }
}

#[derive(Debug)]
pub struct Revise {
    options: LlmOptions,
    constitution: Arc<Constitution>,
    rounds: u32,
}

impl Revise {
    /// The first round's number: the input's `round` (a critique's), else 1.
    fn first_round(row: &InputRow) -> u32 {
        row.u64("round").map(|r| r as u32).unwrap_or(1)
    }

    async fn rounds(&self, row: &InputRow, llm: &Llm<'_>) -> Result<Vec<Emit<RoundRow>>, Missing> {
        let first_round = Self::first_round(row);
        let (Some(prompt_id), Some(mut turns), Some(response), Some(critique)) = (
            row.str("prompt_id"),
            base_turns(row),
            row.str("response"),
            row.str("critique"),
        ) else {
            return Err(Missing("critique"));
        };
        let principle_id = row.str("principle_id").unwrap_or_default();
        let Some(mut principle) = self
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
                RoundRow {
                    round: Some(first_round),
                    ..Default::default()
                },
                None,
                error,
            )]);
        };
        let critique_request = row
            .str("critique_request")
            .map_or_else(|| principle.critique_request.clone(), str::to_string);
        let critique_lineage = row.lineage("critique_lineage");
        turns.push(Message::assistant(response));
        turns.push(Message::user(&critique_request));
        turns.push(Message::assistant(critique));

        let mut out = vec![];
        let mut current = (critique_request, critique.to_string(), critique_lineage);
        for round in first_round..first_round + self.rounds {
            let round_bytes = round.to_le_bytes();
            if round > first_round {
                // A new principle for each further round, critiquing the latest revision.
                principle = self
                    .constitution
                    .draw(self.options.seed, prompt_id, round)
                    .1;
                turns.push(Message::user(&principle.critique_request));
                let request = self.options.request(
                    turns.clone(),
                    &[b"critique", prompt_id.as_bytes(), &round_bytes],
                );
                let reply = llm.call(&request).await;
                match reply.result {
                    Ok(c) => {
                        turns.push(Message::assistant(&c));
                        current = (principle.critique_request.clone(), c, reply.lineage);
                    }
                    Err(e) => {
                        let failed = RoundRow {
                            round: Some(round),
                            principle_id: Some(principle.id.clone()),
                            critique_request: Some(principle.critique_request.clone()),
                            critique_lineage: reply.lineage,
                            ..Default::default()
                        };
                        let error = format!("critique (round {round}): {e}");
                        out.push(Emit::failed(failed, None, error));
                        break;
                    }
                }
            }
            turns.push(Message::user(&principle.revision_request));
            let request = self.options.request(
                turns.clone(),
                &[b"revise", prompt_id.as_bytes(), &round_bytes],
            );
            let reply = llm.call(&request).await;
            let (critique_request, critique, critique_lineage) = current.clone();
            let mut done = RoundRow {
                round: Some(round),
                principle_id: Some(principle.id.clone()),
                critique_request: Some(critique_request),
                critique: Some(critique),
                critique_lineage,
                revision_request: Some(principle.revision_request.clone()),
                revision: None,
            };
            match reply.result {
                Ok(revision) => {
                    turns.push(Message::assistant(&revision));
                    done.revision = Some(revision);
                    out.push(Emit {
                        row: done,
                        lineage: reply.lineage,
                        error: None,
                    });
                }
                Err(e) => {
                    let error = format!("revise (round {round}): {e}");
                    out.push(Emit::failed(done, reply.lineage, error));
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl LlmStage for Revise {
    const NAME: &'static str = "revise";
    type Row = RoundRow;

    fn build(args: &StageArgs, _input: &Schema) -> Result<Self> {
        let rounds = args.parsed_or("rounds", 1u32)?;
        args.check("rounds", rounds, (1..=16).contains(&rounds), "1 to 16")?;
        Ok(Revise {
            options: LlmOptions::parse(args)?,
            constitution: load_constitution(args)?,
            rounds,
        })
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec![
            "prompt_id",
            "prompt",
            "response",
            "principle_id",
            "critique",
        ]
    }
    fn priority(&self) -> u32 {
        2
    }
    fn skipped(&self, row: &InputRow) -> Vec<RoundRow> {
        vec![RoundRow {
            round: Some(Self::first_round(row)),
            ..Default::default()
        }]
    }
    async fn process(&self, row: &InputRow, llm: &Llm<'_>) -> Result<Vec<Emit<RoundRow>>, Missing> {
        self.rounds(row, llm).await
    }
}
