//! `critique(input, …)`: the model critiques its response against a principle drawn per row
//! and round from a seeded RNG.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::Result;

use super::args::StageArgs;
use super::cells::{Cell, OutRow};
use super::exec::{RowStage, StageEnv, StageFactory};
use super::llm_call::{
    LlmOptions, base_turns, call, count_error, lineage_field, null_lineage, text, upstream_error,
};
use super::row::InputRow;
use crate::constitution::Constitution;
use caiflow_llm::Message;

pub fn load_constitution(args: &StageArgs) -> Result<Arc<Constitution>> {
    let spec = args.str_or("constitution", "default");
    Constitution::resolve(&spec)
        .map(Arc::new)
        .map_err(|e| plan_datafusion_err!("{}: {e}", args.function()))
}

#[derive(Debug)]
pub struct Critique {
    options: LlmOptions,
    constitution: Arc<Constitution>,
    round: u32,
}

#[derive(Debug)]
pub struct CritiqueFactory;

impl StageFactory for CritiqueFactory {
    fn function_name(&self) -> &'static str {
        "critique"
    }
    fn build(&self, args: &StageArgs, _input: &Schema) -> Result<Arc<dyn RowStage>> {
        let round = args.parsed_or("round", 1u32)?;
        args.check("round", round, round >= 1, ">= 1")?;
        if round == 0 {
            return plan_err!("critique: round counts from 1");
        }
        Ok(Arc::new(Critique {
            options: LlmOptions::parse(args)?,
            constitution: load_constitution(args)?,
            round,
        }))
    }
}

/// The columns a critique adds (revise re-emits them for its later rounds).
pub fn critique_fields() -> Vec<Field> {
    vec![
        Field::new("round", DataType::UInt32, true),
        Field::new("principle_id", DataType::Utf8, true),
        Field::new("critique_request", DataType::Utf8, true),
        Field::new("critique", DataType::Utf8, true),
        lineage_field("critique"),
    ]
}

#[async_trait]
impl RowStage for Critique {
    fn name(&self) -> &str {
        "critique"
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec!["prompt_id", "prompt", "response"]
    }
    fn output_fields(&self) -> Vec<Field> {
        let mut f = critique_fields();
        f.push(Field::new("error", DataType::Utf8, true));
        f
    }
    fn llm_options(&self) -> Option<&LlmOptions> {
        Some(&self.options)
    }
    fn priority(&self) -> u32 {
        1
    }

    async fn process(&self, row: InputRow, env: &StageEnv) -> Vec<OutRow> {
        let round = Cell::U32(Some(self.round));
        let (Some(prompt_id), Some(mut turns), Some(response)) =
            (row.str("prompt_id"), base_turns(&row), row.str("response"))
        else {
            let error = Some(upstream_error(&row, "response"));
            count_error(env, &error);
            return vec![vec![
                round,
                text(None),
                text(None),
                text(None),
                null_lineage(),
                text(error),
            ]];
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
        let (result, lineage) = call(env, &request).await;
        let (critique, error) = match result {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(format!("critique: {e}"))),
        };
        count_error(env, &error);
        vec![vec![
            round,
            text(Some(principle.id.clone())),
            text(Some(principle.critique_request.clone())),
            text(critique),
            lineage.into(),
            text(error),
        ]]
    }
}
