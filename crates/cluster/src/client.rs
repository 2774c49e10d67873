//! A caiflow session that runs its queries on a cluster: plans are made here (table
//! functions resolve their inputs, endpoints are checked), then each query goes to the
//! scheduler, which cuts it into stages for the executors.

use std::time::Duration;

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::plan_err;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use caiflow_engine::CaiSession;
use caiflow_engine::resources::StageOptions;
use caiflow_llm::config::Config;

use crate::codec::{CaiLogicalCodec, CaiPhysicalCodec};
use crate::error::{ClusterError, Result};
use crate::options::RunOptions;
use crate::process::scalar_functions;

/// A scheduler address: `df://HOST:PORT` (or `HOST:PORT`).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerUrl {
    pub host: String,
    pub port: u16,
}

impl SchedulerUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("df://").unwrap_or(url);
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| {
                ClusterError::Address(format!("the cluster address '{url}' is not df://HOST:PORT"))
            })?;
        Ok(SchedulerUrl {
            host: host.to_string(),
            port,
        })
    }

    pub fn display(&self) -> String {
        format!("df://{}:{}", self.host, self.port)
    }
}

/// The cluster's executors as the scheduler sees them: (id, task slots).
pub async fn executors(url: &SchedulerUrl) -> Result<Vec<(String, usize)>> {
    let fail = |cause: String| ClusterError::Executors {
        url: url.display(),
        cause,
    };
    let api = format!("http://{}:{}/api/executors", url.host, url.port);
    let list: serde_json::Value = reqwest::Client::new()
        .get(&api)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?
        .json()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let list = list
        .as_array()
        .ok_or_else(|| fail("the answer is not a list".into()))?;
    Ok(list
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap_or_default().to_string();
            let spec = &e["specification"];
            let slots = spec["vcores"]
                .as_u64()
                .or_else(|| spec["task_slots"].as_u64())
                .unwrap_or(1)
                .max(1) as usize;
            (id, slots)
        })
        .collect())
}

/// Where a cluster session's run lives: its journal is there for every executor.
#[derive(Clone, Debug, Default)]
pub struct RunLocation {
    pub store: String,
    pub run: String,
}

/// Turn `session` into one that runs its queries on the cluster at `url`. The endpoints of
/// `config` travel with every task (without keys); `run` names the journal executors use.
/// An unreachable scheduler, or one without executors, is an error before anything is sent.
pub async fn connect(
    session: &mut CaiSession,
    url: &str,
    config: &Config,
    run: Option<&RunLocation>,
) -> Result<()> {
    let url = SchedulerUrl::parse(url)?;
    let addr = format!("{}:{}", url.host, url.port);
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(ClusterError::Unreachable {
                url: url.display(),
                cause: e.to_string(),
            });
        }
        Err(_) => {
            return Err(ClusterError::Unreachable {
                url: url.display(),
                cause: "no answer in 5 s".into(),
            });
        }
    }
    let executors = executors(&url).await?;
    if executors.is_empty() {
        return Err(ClusterError::NoExecutors { url: url.display() });
    }
    let slots: usize = executors.iter().map(|(_, s)| s).sum();
    // Without credentials in URLs: executors serve their own definitions of these.
    let endpoints = config.redacted();
    let endpoints = toml::to_string(&endpoints).map_err(|e| {
        ClusterError::Address(format!("encoding the endpoints for the cluster: {e}"))
    })?;
    let mut options = RunOptions {
        store: run.map(|r| r.store.clone()).unwrap_or_default(),
        run: run.map(|r| r.run.clone()).unwrap_or_default(),
        endpoints,
        executors: executors.len(),
        auth: String::new(),
    };
    if let Some(token) = crate::trust::token_from_env() {
        options.auth = crate::trust::sign(&token, &options);
    }
    let state = session.ctx.state();
    let config = state
        .config()
        .clone()
        .with_option_extension(options)
        .with_option_extension(StageOptions { spread: true })
        .with_ballista_logical_extension_codec(std::sync::Arc::new(CaiLogicalCodec::default()))
        .with_ballista_physical_extension_codec(std::sync::Arc::new(CaiPhysicalCodec::default()));
    // Ballista's defaults first (upgrading later would overwrite what is set below).
    let mut config = config.upgrade_for_ballista();
    // One partition per task slot: every executor gets rows, and all of them run at once.
    config.options_mut().execution.target_partitions = slots.max(1);
    // The static planner: adaptive planning coalesces small shuffle partitions (a few
    // kilobytes of prompts are "small"), which would put every row back in one task.
    config
        .options_mut()
        .set("ballista.planner.adaptive.enabled", "false")?;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build();
    let state = state.upgrade_for_ballista(format!("df://{}:{}", url.host, url.port))?;
    let ctx = SessionContext::new_with_state(state);
    // Ballista's session has DataFusion's core scalar functions only.
    for f in scalar_functions() {
        ctx.register_udf((*f).clone());
    }
    // Known, so a query naming it is told why it cannot run here.
    ctx.register_udf(ScalarUDF::new_from_impl(OneProcessOnly::llm()));
    session.ctx = ctx;
    tracing::info!(
        "cluster {}: {} executors, {slots} task slots",
        url.display(),
        executors.len()
    );
    Ok(())
}

/// Ballista reports a failed task as the debug form of its error's wrappers (`Job … failed
/// due to stage 1 failed: Task failed due to runtime execution error:
/// DataFusionError(Shared(External(DataFusionError(Execution("why")))))`); the reason
/// inside, for a one-line message. Other messages are returned as they are.
pub fn readable_error(message: &str) -> String {
    const MARK: &str = "runtime execution error: ";
    let Some(at) = message.find(MARK) else {
        return message.to_string();
    };
    let mut inner = message[at + MARK.len()..].trim();
    const WRAPPERS: [&str; 9] = [
        "DataFusionError(",
        "Shared(",
        "External(",
        "Execution(",
        "Plan(",
        "Internal(",
        "ArrowError(",
        "ObjectStore(",
        "Context(",
    ];
    while let Some(w) = WRAPPERS.iter().find(|w| inner.starts_with(**w)) {
        match inner[w.len()..].strip_suffix(')') {
            Some(rest) => inner = rest.trim(),
            None => break,
        }
    }
    let reason = match inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => inner.to_string(),
    };
    // What the caller said before Ballista's part (the statement, the table).
    let before = &message[..at];
    let context = before
        .find("Job ")
        .map(|j| &before[..j])
        .unwrap_or("")
        .trim_end()
        .trim_end_matches("Execution error:")
        .trim_end()
        .trim_end_matches("Generic DeltaTable error:")
        .trim_end();
    if context.is_empty() {
        format!("a task failed on the cluster: {reason}")
    } else {
        format!("{context} a task failed on the cluster: {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_error_reads_as_its_reason() {
        let m = "Execution error: Job 038 failed: Job failed due to stage 0 failed: Task failed due to runtime execution error: DataFusionError(Shared(External(DataFusionError(Execution(\"this task carries no \\\"endpoints\\\"\")))))";
        assert_eq!(
            readable_error(m),
            "a task failed on the cluster: this task carries no \"endpoints\""
        );
        assert_eq!(readable_error("plain"), "plain");
        let m = format!("plan: line 36 (statement 4): table revisions: {m}");
        assert_eq!(
            readable_error(&m),
            "plan: line 36 (statement 4): table revisions: a task failed on the cluster: this task carries no \"endpoints\""
        );
    }

    #[test]
    fn scheduler_urls_parse() {
        let u = SchedulerUrl::parse("df://10.0.0.1:50050").expect("url");
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 50050));
        assert!(SchedulerUrl::parse("df://nohost").is_err());
    }
}

/// `llm()` in a cluster session: it holds its process's endpoints and journal and cannot
/// travel to an executor, so planning a query that uses it fails, saying what to do.
#[derive(Debug, PartialEq, Eq, Hash)]
struct OneProcessOnly {
    signature: Signature,
}

impl OneProcessOnly {
    fn llm() -> Self {
        OneProcessOnly {
            signature: Signature::variadic_any(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for OneProcessOnly {
    fn name(&self) -> &str {
        caiflow_engine::llm_udf::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        plan_err!(
            "llm() runs in one process, not on a cluster: use generate(input, template => …) \
             in a plan sent to a cluster, or run the query without --cluster"
        )
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        plan_err!("llm() runs in one process, not on a cluster")
    }
}
