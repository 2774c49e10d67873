//! `critique(input, …)`: the model critiques its response against a principle drawn per row
//! and round from a seeded RNG.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::plan_datafusion_err;
use datafusion::error::Result;

use crate::constitution::Constitution;
use crate::output_row;
use crate::stage::{Emit, InputRow, Llm, LlmOptions, LlmStage, Missing, StageArgs, base_turns};
use caiflow_llm::Message;

pub fn load_constitution(args: &StageArgs) -> Result<Arc<Constitution>> {
    let spec = args.str_or("constitution", "default");
    Constitution::resolve(&spec)
        .map(Arc::new)
        .map_err(|e| plan_datafusion_err!("{}: {e}", args.function()))
}

output_row! {
    /// The round, the principle drawn for it and the critique.
    pub struct CritiqueRow {
        round: Option<u32>,
        principle_id: Option<String>,
        critique_request: Option<String>,
        critique: Option<String>,
    }
}

#[derive(Debug)]
pub struct Critique {
    options: LlmOptions,
    constitution: Arc<Constitution>,
    round: u32,
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
        })
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
    fn skipped(&self, _row: &InputRow) -> Vec<CritiqueRow> {
        vec![CritiqueRow {
            round: Some(self.round),
            ..Default::default()
        }]
    }

    async fn process(
        &self,
        row: &InputRow,
        llm: &Llm<'_>,
    ) -> Result<Vec<Emit<CritiqueRow>>, Missing> {
        let (Some(prompt_id), Some(mut turns), Some(response)) =
            (row.str("prompt_id"), base_turns(row), row.str("response"))
        else {
            return Err(Missing("response"));
        };
        let (_, principle) = self
            .constitution
            .draw(self.options.seed, prompt_id, self.round);
        turns.push(Message::assistant(response));
        turns.push(Message::user(&principle.critique_request));
        let round_bytes = self.round.to_le_bytes();
        let request = self
            .options
            .request(turns, &[b"critique", prompt_id.as_bytes(), &round_bytes]);
        let reply = llm.call(&request).await;
        Ok(vec![reply.emit(|critique| CritiqueRow {
            round: Some(self.round),
            principle_id: Some(principle.id.clone()),
            critique_request: Some(principle.critique_request.clone()),
            critique,
        })])
    }
}
