//! A run's materialized tables as Delta Lake tables (`RUN/{table}/`: Parquet files plus
//! `_delta_log/`), through delta-rs on the run's own object store.
//!
//! Each materialization is one Delta commit, an overwrite: the commit is the atomic point of
//! visibility, so other engines (DuckDB, Polars, Spark, delta-rs) see either the previous
//! version or the new one, never a half-written table. What produced a version (the manifest:
//! statement, fingerprint, inputs, times, caiflow version) rides in that commit's
//! `commitInfo` under the key `caiflow`; older versions stay readable until vacuumed.
//!
//! | concern | module |
//! |---|---|
//! | opening tables, versions, caiflow's record, vacuum | [`table`] |
//! | materializing: one overwrite commit, here or on a cluster | [`write`] |
//! | a cluster task writing its rows as data files | [`files_write`] |
//! | a table version as its file list, for plans shipped to a cluster | [`files_read`] |
//! | Delta tables as plan inputs (`STORED AS DELTA`) | [`inputs`] |

pub mod files_read;
pub mod files_write;
pub mod inputs;
pub mod table;
pub mod write;

pub use inputs::{DeltaInputs, register_delta_inputs, register_delta_tables};
pub use table::{
    COMMIT_KEY, ROWS_KEPT, TARGET_FILE_BYTES, Version, caiflow_version, history, input_fingerprint,
    is_damage, is_table_file, open, open_location, provider, vacuum,
};
pub use write::{TableWrite, write, write_on_cluster};
