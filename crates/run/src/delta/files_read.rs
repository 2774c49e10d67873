//! A table version as the list of its data files: how a run's Delta tables are read when a
//! plan is shipped to other processes (a cluster).
//!
//! delta-rs's scan node has no plan codec, so it cannot travel to executors; a Parquet scan
//! of known files is DataFusion's own node, which every plan serializer knows. So the process
//! that plans reads the table's log once ([`FilesTable::of`]) and the plan carries the file
//! list (paths, sizes, partition values): whoever executes it reads exactly the files of that
//! version, as delta-rs would (caiflow's tables have no deletion vectors).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchemaBuilder;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use deltalake_core::DeltaTable;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RunError};

/// One data file of a table version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataFile {
    /// The path inside the object store.
    pub path: String,
    pub size: u64,
    /// One value per partition column, in their order.
    pub partition_values: Vec<Option<String>>,
}

/// What a [`FilesTable`] is, as plain data (its schema travels separately).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilesTableParts {
    /// The object store's URL (`file:///`, `s3://bucket`).
    pub store_url: String,
    pub partition_columns: Vec<String>,
    pub files: Vec<DataFile>,
}

#[derive(Debug)]
pub struct FilesTable {
    parts: FilesTableParts,
    /// Data columns, then partition columns.
    schema: SchemaRef,
}

impl FilesTable {
    /// The files of `table` at the version it is loaded at.
    pub async fn of(table: &DeltaTable) -> Result<FilesTable> {
        let snapshot = table
            .snapshot()
            .map_err(|e| RunError::Store(format!("reading a table's files: {e}")))?;
        let partition_columns = snapshot.metadata().partition_columns().to_vec();
        let root = table.log_store().root_url().clone();
        // Data file paths in the log are relative to the table's folder.
        let folder = object_store::path::Path::from_url_path(root.path())
            .map_err(|e| RunError::Store(format!("table folder {root}: {e}")))?;
        let files = snapshot
            .log_data()
            .iter()
            .map(|f| {
                let values = f.partition_values_map();
                DataFile {
                    path: format!("{folder}/{}", f.object_store_path()),
                    size: f.size().max(0) as u64,
                    partition_values: partition_columns
                        .iter()
                        .map(|c| values.get(c).cloned().flatten())
                        .collect(),
                }
            })
            .collect();
        let provider = super::table::provider(table).await?;
        let full = provider.schema();
        let mut fields: Vec<FieldRef> = full
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(f.name()))
            .cloned()
            .collect();
        for c in &partition_columns {
            fields.push(Arc::new(Field::new(c, DataType::Utf8, true)));
        }
        let store_url = match root.scheme() {
            "file" => "file:///".to_string(),
            scheme => format!("{scheme}://{}", root.host_str().unwrap_or_default()),
        };
        Ok(FilesTable {
            parts: FilesTableParts {
                store_url,
                partition_columns,
                files,
            },
            schema: Arc::new(Schema::new(fields)),
        })
    }

    pub fn parts(&self) -> &FilesTableParts {
        &self.parts
    }

    pub fn from_parts(parts: FilesTableParts, schema: SchemaRef) -> Self {
        FilesTable { parts, schema }
    }
}

#[async_trait]
impl TableProvider for FilesTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let data_columns = self.schema.fields().len() - self.parts.partition_columns.len();
        let file_schema = Arc::new(Schema::new(self.schema.fields()[..data_columns].to_vec()));
        let table_schema = TableSchemaBuilder::new(file_schema)
            .with_table_partition_cols(self.schema.fields()[data_columns..].to_vec())
            .build();
        // The files spread over the session's partitions, largest first onto the least
        // loaded, so every executor gets a share of the rows.
        let groups = state.config().target_partitions().max(1);
        let mut files: Vec<&DataFile> = self.parts.files.iter().collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.size));
        let mut buckets: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, vec![]); groups];
        for f in files {
            let values = f
                .partition_values
                .iter()
                .map(|v| ScalarValue::Utf8(v.clone()))
                .collect();
            let file = PartitionedFile::new(f.path.clone(), f.size).with_partition_values(values);
            if let Some(bucket) = buckets.iter_mut().min_by_key(|(bytes, _)| *bytes) {
                bucket.0 += f.size;
                bucket.1.push(file);
            }
        }
        let file_groups: Vec<FileGroup> = buckets
            .into_iter()
            .filter(|(_, files)| !files.is_empty())
            .map(|(_, files)| FileGroup::new(files))
            .collect();
        let source = Arc::new(ParquetSource::new(table_schema));
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::parse(&self.parts.store_url)?, source)
                .with_file_groups(file_groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
