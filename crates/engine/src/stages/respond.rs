//! `respond(input, …)`: the policy model's initial answer to each prompt.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::error::Result;

use super::args::StageArgs;
use super::cells::OutRow;
use super::exec::{RowStage, StageEnv, StageFactory};
use super::llm_call::{
    LlmOptions, base_turns, call, count_error, lineage_field, null_lineage, text, upstream_error,
};
use super::row::InputRow;

#[derive(Debug)]
pub struct Respond {
    options: LlmOptions,
}

#[derive(Debug)]
pub struct RespondFactory;

impl StageFactory for RespondFactory {
    fn function_name(&self) -> &'static str {
        "respond"
    }
    fn build(&self, args: &StageArgs, _input: &Schema) -> Result<Arc<dyn RowStage>> {
        Ok(Arc::new(Respond {
            options: LlmOptions::parse(args)?,
        }))
    }
}

#[async_trait]
impl RowStage for Respond {
    fn name(&self) -> &str {
        "respond"
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec!["prompt_id", "prompt"]
    }
    fn output_fields(&self) -> Vec<Field> {
        vec![
            Field::new("response", DataType::Utf8, true),
            lineage_field("respond"),
            Field::new("error", DataType::Utf8, true),
        ]
    }
    fn llm_options(&self) -> Option<&LlmOptions> {
        Some(&self.options)
    }

    async fn process(&self, row: InputRow, env: &StageEnv) -> Vec<OutRow> {
        let (Some(prompt_id), Some(turns)) = (row.str("prompt_id"), base_turns(&row)) else {
            let error = Some(upstream_error(&row, "prompt"));
            count_error(env, &error);
            return vec![vec![text(None), null_lineage(), text(error)]];
        };
        let request = self
            .options
            .request(turns, &[b"respond", prompt_id.as_bytes()]);
        let (result, lineage) = call(env, &request).await;
        let (response, error) = match result {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(format!("respond: {e}"))),
        };
        count_error(env, &error);
        vec![vec![text(response), lineage.into(), text(error)]]
    }
}
