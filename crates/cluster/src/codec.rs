//! How caiflow's plan nodes travel between client, scheduler and executors.
//!
//! Ballista ships a query's logical plan from the client to the scheduler and its physical
//! stages from the scheduler to executors; nodes DataFusion does not know go through these
//! extension codecs. caiflow's nodes are encoded as what they were made from, never as live
//! objects: a stage or source as its call (function and argument texts, rebuilt through the
//! engine's factories), a blend as its options, a stored table as its file list, a table
//! write as its location and file sizes. Input plans
//! are encoded recursively with the same codec. Everything else goes to Ballista's own codecs
//! (shuffles, file formats).
//!
//! Wire format: one tag byte, then length-prefixed parts (a JSON head first).

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{TableReference, internal_datafusion_err, internal_err, plan_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::{
    logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use prost::Message;
use serde::{Deserialize, Serialize};

use caiflow_engine::stage::StageCall;
use caiflow_engine::stage::exec::{StageExec, StageExecParts};
use caiflow_engine::stage::source::{SourceExec, SourceExecParts, SourceTable, task_session};
use caiflow_engine::stage::spread::SpreadExec;
use caiflow_engine::stage::table::StageTable;
use caiflow_engine::stages::blend::{BlendKind, BlendTable};
use caiflow_engine::stages::near_dedup::{NearDedupExec, NearDedupTable};
use caiflow_engine::stages::red_team_generate::RedTeamGenerateTable;
use caiflow_engine::stages::{source_exec, source_table, stage_exec, stage_table};
use caiflow_run::delta::files_read::{FilesTable, FilesTableParts};
use caiflow_run::delta::files_write::{FileWrite, WriteFilesExec, WriteFilesTable};

const BALLISTA: u8 = 0;
const STAGE: u8 = 1;
const SOURCE: u8 = 2;
const BLEND: u8 = 3;
const FILES: u8 = 4;
const SPREAD: u8 = 5;
const WRITE: u8 = 6;
const NEAR_DEDUP: u8 = 7;

fn put_part(buf: &mut Vec<u8>, part: &[u8]) {
    buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
    buf.extend_from_slice(part);
}

fn encode(buf: &mut Vec<u8>, tag: u8, head: &impl Serialize, rest: &[&[u8]]) -> Result<()> {
    buf.push(tag);
    let head = serde_json::to_vec(head).map_err(|e| DataFusionError::External(Box::new(e)))?;
    put_part(buf, &head);
    for part in rest {
        put_part(buf, part);
    }
    Ok(())
}

/// The parts after the tag byte.
fn parts(mut buf: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = vec![];
    while !buf.is_empty() {
        let (len, rest) = buf
            .split_first_chunk::<8>()
            .ok_or_else(|| internal_datafusion_err!("caiflow codec: a part is cut off"))?;
        let len = u64::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return internal_err!("caiflow codec: a part is cut off");
        }
        out.push(&rest[..len]);
        buf = &rest[len..];
    }
    Ok(out)
}

fn head<T: for<'de> Deserialize<'de>>(parts: &[&[u8]]) -> Result<T> {
    let first = parts
        .first()
        .ok_or_else(|| internal_datafusion_err!("caiflow codec: no head"))?;
    serde_json::from_slice(first).map_err(|e| DataFusionError::External(Box::new(e)))
}

fn part<'a>(parts: &[&'a [u8]], i: usize) -> Result<&'a [u8]> {
    parts
        .get(i)
        .copied()
        .ok_or_else(|| internal_datafusion_err!("caiflow codec: part {i} is missing"))
}

fn schema_bytes(schema: &Schema) -> Result<Vec<u8>> {
    let proto = datafusion_proto::protobuf::Schema::try_from(schema)?;
    Ok(proto.encode_to_vec())
}

fn schema_from(bytes: &[u8]) -> Result<SchemaRef> {
    let proto = datafusion_proto::protobuf::Schema::decode(bytes)
        .map_err(|e| internal_datafusion_err!("caiflow codec: a schema: {e}"))?;
    Ok(Arc::new(Schema::try_from(&proto)?))
}

#[derive(Serialize, Deserialize)]
struct BlendHead {
    kind: BlendKind,
    ratio: f64,
    seed: i64,
}

/// The logical codec: caiflow's table providers, else Ballista's.
#[derive(Debug, Default)]
pub struct CaiLogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl CaiLogicalCodec {
    fn plan_bytes(&self, plan: &LogicalPlan) -> Result<Vec<u8>> {
        Ok(logical_plan_to_bytes_with_extension_codec(plan, self)?.to_vec())
    }

    fn plan_from(&self, bytes: &[u8], ctx: &TaskContext) -> Result<LogicalPlan> {
        logical_plan_from_bytes_with_extension_codec(bytes, ctx, self)
    }
}

impl LogicalExtensionCodec for CaiLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let Some((&tag, rest)) = buf.split_first() else {
            return internal_err!("caiflow codec: an empty table");
        };
        if tag == BALLISTA {
            return self
                .ballista
                .try_decode_table_provider(rest, table_ref, schema, ctx);
        }
        let parts = parts(rest)?;
        Ok(match tag {
            STAGE => {
                let call: StageCall = head(&parts)?;
                let input = self.plan_from(part(&parts, 1)?, ctx)?;
                Arc::new(stage_table(call, input)?)
            }
            SOURCE => {
                let call: StageCall = head(&parts)?;
                Arc::new(source_table(call, &task_session(ctx))?)
            }
            BLEND => {
                let h: BlendHead = head(&parts)?;
                Arc::new(BlendTable {
                    kind: h.kind,
                    ratio: h.ratio,
                    seed: h.seed,
                    cai: self.plan_from(part(&parts, 1)?, ctx)?,
                    helpful: self.plan_from(part(&parts, 2)?, ctx)?,
                })
            }
            FILES => {
                let p: FilesTableParts = head(&parts)?;
                Arc::new(FilesTable::from_parts(p, schema_from(part(&parts, 1)?)?))
            }
            WRITE => Arc::new(WriteFilesTable {
                write: head(&parts)?,
                input: self.plan_from(part(&parts, 1)?, ctx)?,
            }),
            NEAR_DEDUP => {
                let (column, threshold): (String, f64) = head(&parts)?;
                let input = self.plan_from(part(&parts, 1)?, ctx)?;
                Arc::new(NearDedupTable::try_new(input, column, threshold)?)
            }
            other => return internal_err!("caiflow codec: unknown table tag {other}"),
        })
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(t) = node.downcast_ref::<StageTable>() {
            let input = self.plan_bytes(t.input())?;
            return encode(buf, STAGE, t.call(), &[&input]);
        }
        if let Some(t) = node.downcast_ref::<SourceTable>() {
            return encode(buf, SOURCE, t.call(), &[]);
        }
        if let Some(t) = node.downcast_ref::<BlendTable>() {
            let (cai, helpful) = (self.plan_bytes(&t.cai)?, self.plan_bytes(&t.helpful)?);
            let h = BlendHead {
                kind: t.kind,
                ratio: t.ratio,
                seed: t.seed,
            };
            return encode(buf, BLEND, &h, &[&cai, &helpful]);
        }
        if let Some(t) = node.downcast_ref::<WriteFilesTable>() {
            let input = self.plan_bytes(&t.input)?;
            return encode(buf, WRITE, &t.write, &[&input]);
        }
        if let Some(t) = node.downcast_ref::<NearDedupTable>() {
            let input = self.plan_bytes(&t.input)?;
            return encode(buf, NEAR_DEDUP, &(&t.column, t.threshold), &[&input]);
        }
        if let Some(t) = node.downcast_ref::<FilesTable>() {
            let schema = schema_bytes(&t.schema())?;
            return encode(buf, FILES, t.parts(), &[&schema]);
        }
        if node.downcast_ref::<RedTeamGenerateTable>().is_some() {
            return plan_err!(
                "red_team_generate runs in one process, not on a cluster: run its statement \
                 without --cluster, then the rest of the plan on the cluster (its table is reused)"
            );
        }
        buf.push(BALLISTA);
        self.ballista
            .try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.ballista.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode_udf(node, buf)
    }
}

/// The physical codec: caiflow's execution nodes, else Ballista's.
#[derive(Debug, Default)]
pub struct CaiPhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for CaiPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some((&tag, rest)) = buf.split_first() else {
            return internal_err!("caiflow codec: an empty node");
        };
        if tag == BALLISTA {
            return self.ballista.try_decode(rest, inputs, ctx, proto_converter);
        }
        let parts = parts(rest)?;
        Ok(match tag {
            STAGE => {
                let p: StageExecParts = head(&parts)?;
                let [input] = inputs else {
                    return internal_err!("caiflow codec: a stage has one input");
                };
                Arc::new(stage_exec(p, input.clone())?)
            }
            SOURCE => {
                let p: SourceExecParts = head(&parts)?;
                Arc::new(source_exec(p, ctx)?)
            }
            SPREAD => {
                let (key, total): (String, usize) = head(&parts)?;
                let input =
                    physical_plan_from_bytes_with_extension_codec(part(&parts, 1)?, ctx, self)?;
                let [ids] = inputs else {
                    return internal_err!("caiflow codec: a spread has one child");
                };
                Arc::new(SpreadExec::with_ids(input, &key, total, ids.clone())?)
            }
            WRITE => {
                let write: FileWrite = head(&parts)?;
                let [input] = inputs else {
                    return internal_err!("caiflow codec: a file write has one input");
                };
                Arc::new(WriteFilesExec::new(input.clone(), write))
            }
            NEAR_DEDUP => {
                let (column, threshold): (String, f64) = head(&parts)?;
                let [input] = inputs else {
                    return internal_err!("caiflow codec: near_dedup has one input");
                };
                Arc::new(NearDedupExec::try_new(input.clone(), &column, threshold)?)
            }
            other => return internal_err!("caiflow codec: unknown node tag {other}"),
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(e) = node.downcast_ref::<StageExec>() {
            return encode(buf, STAGE, e.parts(), &[]);
        }
        if let Some(e) = node.downcast_ref::<SourceExec>() {
            return encode(buf, SOURCE, e.parts(), &[]);
        }
        if let Some(e) = node.downcast_ref::<WriteFilesExec>() {
            return encode(buf, WRITE, e.write(), &[]);
        }
        if let Some(e) = node.downcast_ref::<NearDedupExec>() {
            return encode(buf, NEAR_DEDUP, &(e.column(), e.threshold()), &[]);
        }
        if let Some(e) = node.downcast_ref::<SpreadExec>() {
            let input = physical_plan_to_bytes_with_extension_codec(e.input().clone(), self)?;
            return encode(buf, SPREAD, &e.parts(), &[&input]);
        }
        buf.push(BALLISTA);
        self.ballista.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.ballista.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode_udf(node, buf)
    }
}
