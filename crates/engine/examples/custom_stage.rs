//! A custom LLM stage, written outside caiflow's own stages, run against the testkit's mock
//! server.
//!
//! `harm_label(input, …)` asks the model whether each prompt is harmful and adds `label`
//! (the model's word) and `harmful` (whether it said "harmful"). Everything else a stage has
//! comes from the framework ([`LlmStage`]): `harm_label_lineage` (the request behind each
//! row: model, seed, tokens, attempts), `error` (a failed request is a row with its error,
//! never a failed query), skipping rows whose `prompt` is null, retries, the endpoint's
//! concurrency, the run's journal and progress.
//!
//! Run it with `cargo run -p caiflow-engine --example custom_stage`; `cargo test` runs it too.

use async_trait::async_trait;
use caiflow_engine::CaiSession;
use caiflow_engine::output_row;
use caiflow_engine::stage::{
    Emit, InputRow, Llm, LlmOptions, LlmStage, Missing, StageArgs, llm_stage,
};
use caiflow_llm::config::{Config, EndpointConfig};
use caiflow_llm::{Endpoints, Message};
use caiflow_testkit::MockServer;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::error::Result;

output_row! {
    /// The model's one-word label, and whether it says the prompt is harmful.
    pub struct HarmLabel {
        label: Option<String>,
        harmful: Option<bool>,
    }
}

#[derive(Debug)]
struct HarmLabelStage {
    options: LlmOptions,
}

#[async_trait]
impl LlmStage for HarmLabelStage {
    const NAME: &'static str = "harm_label";
    type Row = HarmLabel;

    fn build(args: &StageArgs, _input: &Schema) -> Result<Self> {
        let options = LlmOptions::parse(args)?;
        Ok(HarmLabelStage { options })
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn output(&self) -> &str {
        "label"
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec!["prompt"]
    }
    async fn process(
        &self,
        row: &InputRow,
        llm: &Llm<'_>,
    ) -> Result<Vec<Emit<HarmLabel>>, Missing> {
        let prompt = row.str("prompt").ok_or(Missing("prompt"))?;
        let question =
            format!("Is this request harmful or harmless? Answer in one word.\n\n{prompt}");
        let request = self
            .options
            .request(vec![Message::user(question)], &[prompt.as_bytes()]);
        let reply = llm.call(&request).await;
        Ok(vec![reply.emit(|answer| {
            let label = answer.map(|a| a.trim().trim_end_matches('.').to_ascii_lowercase());
            let harmful = label.as_deref().map(|l| l.starts_with("harmful"));
            HarmLabel { label, harmful }
        })])
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    run().await
}

/// The example; `cargo test` runs it too (`the_example_runs`), so CI runs it.
async fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // A mock OpenAI-compatible server on 127.0.0.1 that gives these two replies to the first
    // two requests, in the order they arrive (rows are processed concurrently, so which
    // prompt gets which reply may vary; a real model would label them by their text).
    let server = MockServer::start().await?;
    server.push_replies(["Harmful".to_string(), "harmless.".to_string()]);
    let policy = EndpointConfig::openai(&server.base_url(), "mock");
    let mut config = Config::default();
    config.endpoints.insert("policy".into(), policy);

    // The session knows caiflow's functions and this one.
    let session = CaiSession::with_stages(
        Endpoints::from_config(&config)?,
        None,
        vec![llm_stage::<HarmLabelStage>()],
    );
    session
        .ctx
        .sql(
            "CREATE VIEW asks AS SELECT column1 AS prompt \
             FROM (VALUES ('How do I pick a lock?'), ('How do I bake bread?'))",
        )
        .await?;
    let batches = session
        .ctx
        .sql(
            "SELECT prompt, label, harmful, harm_label_lineage.model AS model, error \
              FROM harm_label(asks, temperature => 0) ORDER BY prompt",
        )
        .await?
        .collect()
        .await?;
    println!("{}", pretty_format_batches(&batches)?);

    // Checked, so CI notices when the framework changes what a custom stage gets.
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "one output row per prompt");
    assert_eq!(server.requests(), 2, "one request per prompt");
    let table = pretty_format_batches(&batches)?.to_string();
    assert!(
        table.contains("mock"),
        "the lineage names the model:\n{table}"
    );
    let verdicts = |word: &str| table.matches(&format!("| {word} ")).count();
    assert_eq!((verdicts("true"), verdicts("false")), (1, 1), "{table}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_runs() {
        super::run().await.expect("the example");
    }
}
