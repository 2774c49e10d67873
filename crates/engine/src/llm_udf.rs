//! `llm(endpoint, prompt [, options])`: one LLM request per row, as a scalar function for
//! ad-hoc SQL (`SELECT prompt, llm('policy', 'Is this harmful? ' || prompt) FROM prompts`).
//!
//! It is a DataFusion async scalar UDF ([`AsyncScalarUDF`]): the rows of a batch are asked
//! concurrently, up to twice the endpoint's `max_concurrency` in flight, through the same
//! path as the stages (the endpoint's shared concurrency and rate limits, budgets, retries,
//! the session's journal). Async UDFs get no session at execution time, so the function
//! holds the session's endpoints, journal and progress itself (it is registered by
//! [`crate::CaiSession`]).
//!
//! A failed call is NULL, never a failed query: it is counted under the `llm` stage's
//! errors (by reason), which the CLI reports after the statement. What stops the run
//! (Ctrl-C, a spend budget reached, an endpoint that gave up) fails the statement instead,
//! so NULLs standing for calls never made are not committed as answers. A NULL prompt is NULL
//! without a request. The endpoint and the options must be literals, checked when the query
//! is planned: options are a JSON object of the stages' LLM options (`system`,
//! `temperature`, `top_p`, `top_k`, `max_tokens`, `seed`, `retry_truncated`, `few_shot`)
//! and `json_schema` (structured output; an answer that does not parse is a failed call).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{ScalarValue, exec_err, plan_datafusion_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use futures::StreamExt;

use crate::journal::JournalHandle;
use crate::progress::{Progress, StageProgress};
use crate::resources::LOCAL_WORKER;
use crate::stage::args::StageArgs;
use crate::stage::columns::TextColumn;
use crate::stage::env::StageEnv;
use crate::stage::llm_call::complete;
use crate::stage::options::{LlmDefaults, LlmOptions, json_response_format};
use caiflow_llm::{Endpoints, Message};

/// The SQL name, and the name of its progress counters.
pub const NAME: &str = "llm";

/// The `llm` function of one session.
#[derive(Debug)]
pub struct LlmFunction {
    signature: Signature,
    endpoints: Arc<Endpoints>,
    journal: Option<Arc<JournalHandle>>,
    progress: Arc<Progress>,
}

/// Every session has one `llm` function: they are equal by name.
impl PartialEq for LlmFunction {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for LlmFunction {}

impl Hash for LlmFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        NAME.hash(state);
    }
}

/// The `llm` scalar function of a session with these endpoints, journal and progress.
pub fn llm_udf(
    endpoints: Arc<Endpoints>,
    journal: Option<Arc<JournalHandle>>,
    progress: Arc<Progress>,
) -> ScalarUDF {
    let function = LlmFunction {
        // Any types, so literals stay literals (no coercion casts) and are checked while
        // planning; a prompt of another type is cast to text. Volatile: never evaluated
        // while planning (an async function cannot be).
        signature: Signature::one_of(
            vec![TypeSignature::Any(2), TypeSignature::Any(3)],
            Volatility::Volatile,
        ),
        endpoints,
        journal,
        progress,
    };
    AsyncScalarUDF::new(Arc::new(function)).into_scalar_udf()
}

/// A literal text argument (the endpoint, the options).
fn literal(value: Option<&ScalarValue>) -> Option<&str> {
    match value? {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.as_deref(),
        _ => None,
    }
}

/// The call's LLM options: the endpoint and the options object, checked as the stages check
/// theirs.
fn parse_options(endpoint: &str, options: Option<&str>) -> Result<CallOptions> {
    let mut texts = vec![format!("endpoint => {endpoint}")];
    if let Some(json) = options {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| {
                plan_datafusion_err!(
                    "{NAME}: options must be a JSON object such as '{{\"temperature\": 0, \"max_tokens\": 64}}': {e}"
                )
            })?;
        for (key, value) in object {
            let value = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            texts.push(format!("{key} => {value}"));
        }
    }
    let args = StageArgs::parse_texts(NAME, texts)?;
    let defaults = LlmDefaults {
        few_shot: Some("none"),
        ..Default::default()
    };
    let llm = LlmOptions::parse_with(&args, &defaults)?;
    let response_format = args
        .str("json_schema")
        .map(|s| json_response_format(NAME, "answer", s))
        .transpose()?;
    args.finish(&[])?;
    Ok(CallOptions {
        llm,
        response_format,
    })
}

/// What a call of `llm()` asks with.
#[derive(Debug)]
struct CallOptions {
    llm: LlmOptions,
    /// Structured output (`json_schema`): the answer must parse as JSON.
    response_format: Option<serde_json::Value>,
}

impl LlmFunction {
    /// The endpoint and options of a call, from its literal arguments.
    fn call_options(&self, args: &[Option<&ScalarValue>]) -> Result<CallOptions> {
        let Some(endpoint) = literal(args.first().copied().flatten()) else {
            return plan_err!(
                "{NAME}: the first argument must be an endpoint's name as a literal, e.g. llm('policy', prompt)"
            );
        };
        let options = match args.get(2) {
            None => None,
            Some(v) => Some(literal(*v).ok_or_else(|| {
                plan_datafusion_err!("{NAME}: the options must be a literal JSON object")
            })?),
        };
        self.endpoints
            .get(endpoint)
            .map_err(|e| plan_datafusion_err!("{NAME}: {e}"))?;
        parse_options(endpoint, options)
    }
}

impl ScalarUDFImpl for LlmFunction {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    /// Checks the endpoint and options while the query is planned.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.call_options(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(NAME, DataType::Utf8, true)))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("{NAME}: an async function, evaluated by DataFusion's async execution")
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for LlmFunction {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let literals: Vec<Option<ScalarValue>> = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => Some(s.clone()),
                ColumnarValue::Array(_) => None,
            })
            .collect();
        let refs: Vec<Option<&ScalarValue>> = literals.iter().map(Option::as_ref).collect();
        let options = Arc::new(self.call_options(&refs)?);
        let endpoint = self
            .endpoints
            .get(&options.llm.endpoint)
            .map_err(|e| plan_datafusion_err!("{NAME}: {e}"))?;
        let rows = args.number_rows;
        let prompts: ArrayRef = match args.args.get(1) {
            Some(p) => p.to_array(rows)?,
            None => return exec_err!("{NAME}: no prompt argument"),
        };
        let Some(prompts) = TextColumn::of(prompts.as_ref()) else {
            return exec_err!("{NAME}: the prompt has no text form");
        };
        let window = endpoint.max_concurrency().max(1) * 2;
        let env = Arc::new(StageEnv {
            endpoint: Some(endpoint),
            worker: LOCAL_WORKER.into(),
            progress: self.progress.llm_stage(NAME),
            journal: self.journal.clone(),
            priority: 0,
            retry_truncated: options.llm.retry_truncated,
            budget_refused: Default::default(),
        });
        let answers: Vec<Option<String>> = futures::stream::iter(0..rows)
            .map(|i| {
                let prompt = prompts.get(i).map(str::to_string);
                let (env, options) = (env.clone(), options.clone());
                async move { ask(&env, &options, prompt).await }
            })
            .buffered(window)
            .collect()
            .await;
        // The run stops (Ctrl-C, a budget, an endpoint that gave up): the statement fails,
        // so NULLs that stand for calls never made are not committed as answers.
        if let Some(why) = env.stopped().await {
            return exec_err!("{NAME}: {why}");
        }
        let mut out = StringBuilder::with_capacity(rows, 0);
        for answer in answers {
            out.append_option(answer);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// One row's answer: NULL for a NULL prompt, and for a failed call or, with a JSON schema,
/// an answer that is not JSON (counted as an error).
async fn ask(env: &StageEnv, options: &CallOptions, prompt: Option<String>) -> Option<String> {
    let prompt = prompt?;
    StageProgress::add(&env.progress.rows_started, 1);
    let key = [NAME.as_bytes(), prompt.as_bytes()];
    let mut request = options
        .llm
        .request(vec![Message::user(prompt.clone())], &key);
    request.params.response_format = options.response_format.clone();
    let (result, _lineage) = complete(env, &request).await;
    StageProgress::add(&env.progress.rows_done, 1);
    let failed = |why: String| {
        env.progress.error(&format!("{NAME}: {why}"));
        None
    };
    match result {
        Ok(c) if options.response_format.is_some() => {
            match serde_json::from_str::<serde_json::Value>(c.text.trim()) {
                Ok(_) => Some(c.text),
                Err(e) => failed(format!("the answer is not valid JSON: {e}")),
            }
        }
        Ok(c) => Some(c.text),
        Err(e) => failed(e),
    }
}

/// Calls of `llm()` that failed (and returned NULL) since the last look, for the warning a
/// SQL client prints after each statement.
#[derive(Debug, Default)]
pub struct FailedCalls {
    seen_errors: u64,
    seen_rows: u64,
}

impl FailedCalls {
    /// "llm(): N of M call(s) failed and returned NULL (reason: count, …)", when calls
    /// failed since the last look.
    pub fn since_last(&mut self, progress: &Progress) -> Option<String> {
        let stage = progress.snapshot().into_iter().find(|s| s.name == NAME)?;
        let stats = stage.stats();
        let (errors, rows) = (stats.errors, stats.rows);
        let new_errors = errors.saturating_sub(self.seen_errors);
        let new_rows = rows.saturating_sub(self.seen_rows);
        self.seen_errors = errors;
        self.seen_rows = rows;
        if new_errors == 0 {
            return None;
        }
        let reasons: Vec<String> = stats
            .errors_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect();
        Some(format!(
            "{NAME}(): {new_errors} of {new_rows} call(s) failed and returned NULL ({})",
            reasons.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_json_of_the_stages_options() {
        let o = parse_options(
            "policy",
            Some(
                r#"{"temperature": 0, "max_tokens": 8, "system": "Be brief, please.",
                    "json_schema": {"type": "object"}}"#,
            ),
        )
        .unwrap();
        assert_eq!(o.llm.temperature, 0.0);
        assert_eq!(o.llm.max_tokens, 8);
        assert_eq!(o.llm.system.as_deref(), Some("Be brief, please."));
        let format = o.response_format.unwrap();
        assert_eq!(format["json_schema"]["schema"]["type"], "object");
        let bad = parse_options("policy", Some(r#"{"temprature": 0}"#)).unwrap_err();
        assert!(
            bad.to_string().contains("unknown option 'temprature'"),
            "{bad}"
        );
        let range = parse_options("policy", Some(r#"{"temperature": 5}"#)).unwrap_err();
        assert!(range.to_string().contains("out of range"), "{range}");
        assert!(parse_options("policy", Some("temperature => 0")).is_err());
        assert!(parse_options("policy", Some(r#"{"endpoint": "judge"}"#)).is_err());
    }
}
