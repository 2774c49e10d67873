//! `{stage}_lineage`: where each LLM answer came from (request hash, model, sampling,
//! attempts, latency, tokens, finish reason), one struct column per LLM stage so chained
//! stages keep every stage's lineage side by side.
//!
//! A stage records a plain [`Lineage`] per request; the assembler builds the struct column
//! for a whole output batch at once ([`LineageBuilder`]), and a stage that carries an input
//! lineage forward reads it from columns decoded once per batch ([`LineageColumns`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, StringBuilder, StructArray,
    UInt32Array, UInt32Builder, UInt64Array, UInt64Builder,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float64Type, UInt32Type, UInt64Type};

use super::columns::TextColumn;

/// The lineage of one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lineage {
    pub request_hash: Option<String>,
    pub model: Option<String>,
    pub endpoint: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    pub attempts: Option<u32>,
    pub latency_ms: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub finish_reason: Option<String>,
    /// Who sent the request: `local` for a run in one process, the executor's id on a
    /// cluster.
    pub worker: Option<String>,
}

pub fn lineage_fields() -> Fields {
    Fields::from(vec![
        Field::new("request_hash", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("endpoint", DataType::Utf8, true),
        Field::new("temperature", DataType::Float64, true),
        Field::new("top_p", DataType::Float64, true),
        Field::new("top_k", DataType::UInt32, true),
        Field::new("max_tokens", DataType::UInt32, true),
        Field::new("seed", DataType::UInt64, true),
        Field::new("attempts", DataType::UInt32, true),
        Field::new("latency_ms", DataType::UInt64, true),
        Field::new("prompt_tokens", DataType::UInt64, true),
        Field::new("completion_tokens", DataType::UInt64, true),
        Field::new("finish_reason", DataType::Utf8, true),
        Field::new("worker", DataType::Utf8, true),
    ])
}

/// `{stage}_lineage`.
pub fn lineage_field(stage: &str) -> Field {
    Field::new(
        format!("{stage}_lineage"),
        DataType::Struct(lineage_fields()),
        true,
    )
}

/// Builds a lineage struct column, one [`Lineage`] (or null) at a time.
#[derive(Debug, Default)]
pub struct LineageBuilder {
    request_hash: StringBuilder,
    model: StringBuilder,
    endpoint: StringBuilder,
    temperature: Float64Builder,
    top_p: Float64Builder,
    top_k: UInt32Builder,
    max_tokens: UInt32Builder,
    seed: UInt64Builder,
    attempts: UInt32Builder,
    latency_ms: UInt64Builder,
    prompt_tokens: UInt64Builder,
    completion_tokens: UInt64Builder,
    finish_reason: StringBuilder,
    worker: StringBuilder,
    valid: Vec<bool>,
}

impl LineageBuilder {
    pub fn append(&mut self, lineage: Option<&Lineage>) {
        let empty = Lineage::default();
        let l = lineage.unwrap_or(&empty);
        self.request_hash.append_option(l.request_hash.as_deref());
        self.model.append_option(l.model.as_deref());
        self.endpoint.append_option(l.endpoint.as_deref());
        self.temperature.append_option(l.temperature);
        self.top_p.append_option(l.top_p);
        self.top_k.append_option(l.top_k);
        self.max_tokens.append_option(l.max_tokens);
        self.seed.append_option(l.seed);
        self.attempts.append_option(l.attempts);
        self.latency_ms.append_option(l.latency_ms);
        self.prompt_tokens.append_option(l.prompt_tokens);
        self.completion_tokens.append_option(l.completion_tokens);
        self.finish_reason.append_option(l.finish_reason.as_deref());
        self.worker.append_option(l.worker.as_deref());
        self.valid.push(lineage.is_some());
    }

    pub fn finish(mut self) -> ArrayRef {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.request_hash.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.endpoint.finish()),
            Arc::new(self.temperature.finish()),
            Arc::new(self.top_p.finish()),
            Arc::new(self.top_k.finish()),
            Arc::new(self.max_tokens.finish()),
            Arc::new(self.seed.finish()),
            Arc::new(self.attempts.finish()),
            Arc::new(self.latency_ms.finish()),
            Arc::new(self.prompt_tokens.finish()),
            Arc::new(self.completion_tokens.finish()),
            Arc::new(self.finish_reason.finish()),
            Arc::new(self.worker.finish()),
        ];
        let nulls = NullBuffer::from(std::mem::take(&mut self.valid));
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        Arc::new(StructArray::new(lineage_fields(), columns, nulls))
    }
}

/// An input lineage column, its fields decoded once per batch (fields it lacks read as
/// null, so lineage written by older versions still carries forward).
#[derive(Debug)]
pub struct LineageColumns {
    nulls: Option<NullBuffer>,
    request_hash: Option<TextColumn>,
    model: Option<TextColumn>,
    endpoint: Option<TextColumn>,
    temperature: Option<Float64Array>,
    top_p: Option<Float64Array>,
    top_k: Option<UInt32Array>,
    max_tokens: Option<UInt32Array>,
    seed: Option<UInt64Array>,
    attempts: Option<UInt32Array>,
    latency_ms: Option<UInt64Array>,
    prompt_tokens: Option<UInt64Array>,
    completion_tokens: Option<UInt64Array>,
    finish_reason: Option<TextColumn>,
    worker: Option<TextColumn>,
}

impl LineageColumns {
    pub fn of(array: &dyn Array) -> Option<LineageColumns> {
        let s = array.as_struct_opt()?;
        let text = |n: &str| TextColumn::of(s.column_by_name(n)?.as_ref());
        let f64 = |n: &str| {
            let c = cast(s.column_by_name(n)?, &DataType::Float64).ok()?;
            Some(c.as_primitive::<Float64Type>().clone())
        };
        let u32 = |n: &str| {
            let c = cast(s.column_by_name(n)?, &DataType::UInt32).ok()?;
            Some(c.as_primitive::<UInt32Type>().clone())
        };
        let u64 = |n: &str| {
            let c = cast(s.column_by_name(n)?, &DataType::UInt64).ok()?;
            Some(c.as_primitive::<UInt64Type>().clone())
        };
        Some(LineageColumns {
            nulls: s.nulls().cloned(),
            request_hash: text("request_hash"),
            model: text("model"),
            endpoint: text("endpoint"),
            temperature: f64("temperature"),
            top_p: f64("top_p"),
            top_k: u32("top_k"),
            max_tokens: u32("max_tokens"),
            seed: u64("seed"),
            attempts: u32("attempts"),
            latency_ms: u64("latency_ms"),
            prompt_tokens: u64("prompt_tokens"),
            completion_tokens: u64("completion_tokens"),
            finish_reason: text("finish_reason"),
            worker: text("worker"),
        })
    }

    /// Row `i`'s lineage; `None` when the struct is null there.
    pub fn get(&self, i: usize) -> Option<Lineage> {
        if self.nulls.as_ref().is_some_and(|n| n.is_null(i)) {
            return None;
        }
        fn text(c: &Option<TextColumn>, i: usize) -> Option<String> {
            c.as_ref()?.get(i).map(str::to_string)
        }
        fn prim<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
            c: &Option<datafusion::arrow::array::PrimitiveArray<T>>,
            i: usize,
        ) -> Option<T::Native> {
            c.as_ref().filter(|c| c.is_valid(i)).map(|c| c.value(i))
        }
        Some(Lineage {
            request_hash: text(&self.request_hash, i),
            model: text(&self.model, i),
            endpoint: text(&self.endpoint, i),
            temperature: prim(&self.temperature, i),
            top_p: prim(&self.top_p, i),
            top_k: prim(&self.top_k, i),
            max_tokens: prim(&self.max_tokens, i),
            seed: prim(&self.seed, i),
            attempts: prim(&self.attempts, i),
            latency_ms: prim(&self.latency_ms, i),
            prompt_tokens: prim(&self.prompt_tokens, i),
            completion_tokens: prim(&self.completion_tokens, i),
            finish_reason: text(&self.finish_reason, i),
            worker: text(&self.worker, i),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_column_reads_back_row_by_row() {
        let full = Lineage {
            request_hash: Some("ab12".into()),
            model: Some("m".into()),
            endpoint: Some("policy".into()),
            temperature: Some(0.7),
            top_p: None,
            top_k: Some(40),
            max_tokens: Some(256),
            seed: Some(7),
            attempts: Some(2),
            latency_ms: Some(15),
            prompt_tokens: Some(10),
            completion_tokens: None,
            finish_reason: Some("length".into()),
            worker: Some("local".into()),
        };
        let mut b = LineageBuilder::default();
        b.append(Some(&full));
        b.append(None);
        b.append(Some(&Lineage::default()));
        let array = b.finish();
        assert_eq!(array.len(), 3);
        assert_eq!(array.null_count(), 1);
        let read = LineageColumns::of(array.as_ref()).expect("a lineage struct");
        assert_eq!(read.get(0), Some(full));
        assert_eq!(read.get(1), None);
        assert_eq!(read.get(2), Some(Lineage::default()));
    }
}
