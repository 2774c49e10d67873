//! `respond(input, …)`: the policy model's initial answer to each prompt.

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::error::Result;

use crate::output_row;
use crate::stage::{Emit, InputRow, Llm, LlmOptions, LlmStage, Missing, StageArgs, base_turns};

output_row! {
    /// The model's answer.
    pub struct Answer { response: Option<String> }
}

#[derive(Debug)]
pub struct Respond {
    options: LlmOptions,
}

#[async_trait]
impl LlmStage for Respond {
    const NAME: &'static str = "respond";
    type Row = Answer;

    fn build(args: &StageArgs, _input: &Schema) -> Result<Self> {
        let options = LlmOptions::parse(args)?;
        Ok(Respond { options })
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec!["prompt_id", "prompt"]
    }
    async fn process(&self, row: &InputRow, llm: &Llm<'_>) -> Result<Vec<Emit<Answer>>, Missing> {
        let (Some(id), Some(turns)) = (row.str("prompt_id"), base_turns(row)) else {
            return Err(Missing("prompt"));
        };
        let request = self.options.request(turns, &[b"respond", id.as_bytes()]);
        let reply = llm.call(&request).await;
        Ok(vec![reply.emit(|response| Answer { response })])
    }
}
