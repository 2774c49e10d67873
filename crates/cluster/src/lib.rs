//! caiflow on Apache DataFusion Ballista: the same plans on a cluster of executors.
//!
//! - [`process`]: `caiflow cluster scheduler` and `caiflow cluster executor`, Ballista's
//!   processes with caiflow's functions, codecs and object stores.
//! - [`client`]: a caiflow session that plans locally and runs its queries on a cluster.
//! - [`codec`]: how caiflow's plan nodes travel (calls and options, never live clients).
//! - [`options`]: what every task carries of its run (`caiflow.*` session options).
//! - [`resources`]: an executor's live endpoints and journals, shared by a run's tasks.
//! - [`stores`]: object stores made from the environment on first use (`s3://` buckets).
//! - [`trust`]: what an executor serves and touches (its own endpoints, its `--allow` roots)
//!   and who may submit (`CAIFLOW_CLUSTER_TOKEN`).
//!
//! It owns distribution. It must not know what a stage does: stages are rebuilt from their
//! calls through the engine's factories.

pub mod client;
pub mod codec;
pub mod error;
pub mod options;
pub mod process;
pub mod resources;
pub mod stores;
pub mod trust;

pub use error::ClusterError;
