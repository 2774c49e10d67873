//! `revise(input, rounds => N, …)`: the model rewrites its response to address the critique.
//!
//! With `rounds => N > 1` (the CAI paper uses 4) the stage goes on in the same conversation:
//! a new principle is drawn, the latest revision is critiqued and revised again. It emits one
//! row per round (`round` = 1..N), since the paper trains on every revision. NeMo-Aligner
//! does one round, the default.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::error::Result;

use super::args::StageArgs;
use super::cells::{Cell, OutRow};
use super::critique::{critique_fields, load_constitution};
use super::exec::{RowStage, StageEnv, StageFactory};
use super::llm_call::{
    Lineage, LlmOptions, base_turns, call, count_error, lineage_field, text, upstream_error,
};
use super::row::InputRow;
use crate::constitution::Constitution;
use caiflow_llm::Message;

#[derive(Debug)]
pub struct Revise {
    options: LlmOptions,
    constitution: Arc<Constitution>,
    rounds: u32,
}

#[derive(Debug)]
pub struct ReviseFactory;

impl StageFactory for ReviseFactory {
    fn function_name(&self) -> &'static str {
        "revise"
    }
    fn build(&self, args: &StageArgs, _input: &Schema) -> Result<Arc<dyn RowStage>> {
        let rounds = args.parsed_or("rounds", 1u32)?;
        args.check("rounds", rounds, (1..=16).contains(&rounds), "1 to 16")?;
        Ok(Arc::new(Revise {
            options: LlmOptions::parse(args)?,
            constitution: load_constitution(args)?,
            rounds,
        }))
    }
}

/// One output row's cells, in `output_fields` order.
struct RoundRow {
    round: u32,
    principle_id: Option<String>,
    critique_request: Option<String>,
    critique: Option<String>,
    critique_lineage: Option<Lineage>,
    revision_request: Option<String>,
    revision: Option<String>,
    revise_lineage: Option<Lineage>,
    error: Option<String>,
}

impl RoundRow {
    fn cells(self) -> OutRow {
        vec![
            Cell::U32(Some(self.round)),
            text(self.principle_id),
            text(self.critique_request),
            text(self.critique),
            self.critique_lineage.into(),
            text(self.revision_request),
            text(self.revision),
            self.revise_lineage.into(),
            text(self.error),
        ]
    }
}

impl Revise {
    fn failed(&self, round: u32, error: String) -> RoundRow {
        RoundRow {
            round,
            principle_id: None,
            critique_request: None,
            critique: None,
            critique_lineage: None,
            revision_request: None,
            revision: None,
            revise_lineage: None,
            error: Some(error),
        }
    }

    async fn rounds(&self, row: &InputRow, env: &StageEnv) -> Vec<RoundRow> {
        let first_round = row.u64("round").map(|r| r as u32).unwrap_or(1);
        let (Some(prompt_id), Some(mut turns), Some(response), Some(critique)) = (
            row.str("prompt_id"),
            base_turns(row),
            row.str("response"),
            row.str("critique"),
        ) else {
            return vec![self.failed(first_round, upstream_error(row, "critique"))];
        };
        let principle_id = row.str("principle_id").unwrap_or_default();
        let Some(mut principle) = self
            .constitution
            .principles
            .iter()
            .find(|p| p.id == principle_id)
        else {
            return vec![self.failed(
                first_round,
                format!(
                    "revise: principle '{principle_id}' is not in constitution '{}' (give revise the constitution critique used)",
                    self.constitution.source
                ),
            )];
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
                let (result, lineage) = call(env, &request).await;
                match result {
                    Ok(c) => {
                        turns.push(Message::assistant(&c));
                        current = (principle.critique_request.clone(), c, lineage);
                    }
                    Err(e) => {
                        let mut failed =
                            self.failed(round, format!("critique (round {round}): {e}"));
                        failed.principle_id = Some(principle.id.clone());
                        failed.critique_request = Some(principle.critique_request.clone());
                        failed.critique_lineage = lineage;
                        out.push(failed);
                        break;
                    }
                }
            }
            turns.push(Message::user(&principle.revision_request));
            let request = self.options.request(
                turns.clone(),
                &[b"revise", prompt_id.as_bytes(), &round_bytes],
            );
            let (result, lineage) = call(env, &request).await;
            let (critique_request, critique, critique_lineage) = current.clone();
            let mut row = RoundRow {
                round,
                principle_id: Some(principle.id.clone()),
                critique_request: Some(critique_request),
                critique: Some(critique),
                critique_lineage,
                revision_request: Some(principle.revision_request.clone()),
                revision: None,
                revise_lineage: lineage,
                error: None,
            };
            match result {
                Ok(revision) => {
                    turns.push(Message::assistant(&revision));
                    row.revision = Some(revision);
                    out.push(row);
                }
                Err(e) => {
                    row.error = Some(format!("revise (round {round}): {e}"));
                    out.push(row);
                    break;
                }
            }
        }
        out
    }
}

#[async_trait]
impl RowStage for Revise {
    fn name(&self) -> &str {
        "revise"
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
    fn output_fields(&self) -> Vec<Field> {
        let mut f = critique_fields();
        f.push(Field::new("revision_request", DataType::Utf8, true));
        f.push(Field::new("revision", DataType::Utf8, true));
        f.push(lineage_field("revise"));
        f.push(Field::new("error", DataType::Utf8, true));
        f
    }
    fn llm_options(&self) -> Option<&LlmOptions> {
        Some(&self.options)
    }
    fn priority(&self) -> u32 {
        2
    }

    async fn process(&self, row: InputRow, env: &StageEnv) -> Vec<OutRow> {
        self.rounds(&row, env)
            .await
            .into_iter()
            .map(|r| {
                count_error(env, &r.error);
                r.cells()
            })
            .collect()
    }
}
