//! The cluster's processes: Ballista's scheduler and executor with caiflow's functions,
//! codecs and object stores (the stock Ballista binaries cannot decode caiflow's nodes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;

use caiflow_engine::resources::{Resources, StageOptions, TaskTableFactories};
use caiflow_llm::CancellationToken;

use crate::codec::{CaiLogicalCodec, CaiPhysicalCodec};
use crate::error::{ClusterError, Result};
use crate::options::RunOptions;
use crate::resources::{ExecutorResources, Trust};
use crate::stores::EnvObjectStores;

/// The scalar functions every cluster process registers: Ballista's sessions start with
/// DataFusion's core functions only, and plans also use the nested ones (`make_array`, in
/// blends and user SQL) and caiflow's.
pub fn scalar_functions() -> Vec<Arc<datafusion::logical_expr::ScalarUDF>> {
    let mut functions = datafusion::functions_nested::all_default_nested_functions();
    functions.push(Arc::new(caiflow_engine::udf::split_of_udf()));
    functions.push(Arc::new(caiflow_engine::udf::unit_hash_udf()));
    functions
}

/// The session configuration of every cluster process: Ballista's, with caiflow's options
/// (so the `caiflow.*` values shipped with a task are kept) and codecs.
pub fn cluster_config() -> SessionConfig {
    // Source functions reading a Delta table call it again where they run.
    let delta: Arc<dyn datafusion::catalog::TableProviderFactory> =
        Arc::new(caiflow_run::delta::DeltaInputs { files: false });
    let factories = TaskTableFactories(vec![(
        caiflow_engine::stage::input::DELTA.to_string(),
        delta,
    )]);
    SessionConfig::new_with_ballista()
        .with_extension(Arc::new(factories))
        .with_option_extension(RunOptions::default())
        .with_option_extension(StageOptions::default())
        .with_ballista_logical_extension_codec(Arc::new(CaiLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(CaiPhysicalCodec::default()))
}

fn runtime(
    work_dir: Option<&str>,
    stores: Arc<EnvObjectStores>,
) -> datafusion::error::Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(stores);
    if let Some(dir) = work_dir {
        builder = builder.with_temp_file_path(dir);
    }
    Ok(Arc::new(builder.build()?))
}

fn address(what: &str, bind: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    bind.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClusterError::Address(format!("{what} '{bind}' is not HOST:PORT")))
}

/// Options of `caiflow cluster scheduler`.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    pub bind: String,
    /// An executor not heard from for this long is taken as lost (its tasks run elsewhere).
    pub executor_timeout: Duration,
}

/// Run a scheduler until the process is stopped.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<()> {
    let addr = address("--bind", &options.bind)?;
    let token = crate::trust::token_from_env();
    crate::trust::check_bind("--bind", addr, token.as_deref())?;
    let session_builder = Arc::new(
        move |config: SessionConfig| -> datafusion::error::Result<SessionState> {
            // Every job's session is built here from the client's options: one not signed
            // with the cluster's token is refused before anything is planned.
            if token.is_some() {
                let run = config
                    .options()
                    .extensions
                    .get::<RunOptions>()
                    .cloned()
                    .unwrap_or_default();
                crate::trust::verify(token.as_deref(), &run)
                    .map_err(datafusion::error::DataFusionError::Execution)?;
            }
            let state = ballista_core::utils::default_session_builder(config)?;
            let stores = Arc::new(EnvObjectStores::default());
            let mut state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
                .with_runtime_env(runtime(None, stores)?)
                .build();
            for f in scalar_functions() {
                datafusion::execution::FunctionRegistry::register_udf(&mut state, f)?;
            }
            Ok(state)
        },
    );
    let timeout = options.executor_timeout.as_secs().max(2);
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        external_host: addr.ip().to_string(),
        bind_port: addr.port(),
        // Rows are spread by hash over partitions; one partition per executor in turn, so
        // every executor sends requests (Ballista's default fills one executor first).
        task_distribution: TaskDistributionPolicy::RoundRobin,
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 3).max(1),
        no_executors_grace_period_seconds: timeout,
        override_config_producer: Some(Arc::new(cluster_config)),
        override_session_builder: Some(session_builder),
        override_logical_codec: Some(Arc::new(CaiLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(CaiPhysicalCodec::default())),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await?;
    start_server(cluster, addr, Arc::new(config)).await?;
    Ok(())
}

/// Options of `caiflow cluster executor`.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// The scheduler's HOST:PORT.
    pub scheduler: String,
    /// Arrow Flight (results and shuffles) on this HOST:PORT, the executor's gRPC on the
    /// next port.
    pub bind: String,
    /// Tasks run at once (default: the cores).
    pub concurrent_tasks: usize,
    /// How often the executor tells the scheduler it is alive.
    pub heartbeat: Duration,
    /// Shuffle files and other scratch data (default: a temporary folder).
    pub work_dir: Option<String>,
    /// The endpoints this executor may serve (`--config`): tasks naming others are refused.
    pub endpoints: Option<caiflow_llm::config::Config>,
    /// Where tasks may read and write (`--allow`, folders or `s3://bucket[/prefix]`).
    pub allow: Vec<String>,
}

/// Run an executor until the process is stopped. `stop` halts its endpoints.
pub async fn run_executor(options: ExecutorOptions, stop: CancellationToken) -> Result<()> {
    let addr = address("--bind", &options.bind)?;
    let scheduler = address("--scheduler", &options.scheduler)?;
    let token = crate::trust::token_from_env();
    crate::trust::check_bind("--bind", addr, token.as_deref())?;
    let roots = Arc::new(crate::trust::Roots::parse(&options.allow)?);
    let worker = options.bind.clone();
    let trust = Trust {
        endpoints: options.endpoints.clone(),
        roots: roots.clone(),
        token,
    };
    let resources = Arc::new(ExecutorResources::new(&worker, stop, trust));
    let shared = resources.clone();
    let config_producer =
        Arc::new(move || cluster_config().with_extension(Arc::new(Resources(shared.clone()))));
    let mut registry = BallistaFunctionRegistry::default();
    for f in scalar_functions() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    let work_dir = options.work_dir.clone();
    let stores = Arc::new(EnvObjectStores::confined(roots));
    let runtime_producer =
        Arc::new(move |_: &SessionConfig| runtime(work_dir.as_deref(), stores.clone()));
    let config = ExecutorProcessConfig {
        executor_id: worker,
        bind_host: addr.ip().to_string(),
        external_host: Some(addr.ip().to_string()),
        port: addr.port(),
        grpc_port: addr.port().checked_add(1).ok_or_else(|| {
            ClusterError::Address(format!(
                "--bind {}: the next port (gRPC) is out of range",
                options.bind
            ))
        })?,
        scheduler_host: scheduler.ip().to_string(),
        scheduler_port: scheduler.port(),
        scheduler_connect_timeout_seconds: 10,
        vcores: options.concurrent_tasks,
        work_dir: options.work_dir.clone(),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        override_config_producer: Some(config_producer),
        override_runtime_producer: Some(runtime_producer),
        override_function_registry: Some(Arc::new(registry)),
        override_logical_codec: Some(Arc::new(CaiLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(CaiPhysicalCodec::default())),
        ..Default::default()
    };
    let ended = start_executor_process(Arc::new(config)).await;
    resources.flush().await;
    Ok(ended?)
}
