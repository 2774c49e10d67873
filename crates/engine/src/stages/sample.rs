//! `sample(input, temperatures => '0.01,0.51,1.01,1.51', …)`: several candidate answers per
//! prompt, one row per candidate, for an AI judge to rank (RL-CAI / RLAIF).
//!
//! Defaults are NeMo-Aligner's: four candidates at those temperatures, top_k 50, top_p 0.95.
//! A prompt's candidates are requested together and leave together, so a downstream `judge`
//! can start on a prompt as soon as its candidates are in.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::Result;

use super::args::StageArgs;
use super::cells::{Cell, OutRow};
use super::exec::{RowStage, StageEnv, StageFactory};
use super::llm_call::valid_temperature;
use super::llm_call::{
    LlmDefaults, LlmOptions, base_turns, call, count_error, lineage_field, null_lineage, text,
    upstream_error,
};
use super::row::InputRow;

pub const DEFAULT_TEMPERATURES: &str = "0.01,0.51,1.01,1.51";

#[derive(Debug)]
pub struct Sample {
    options: LlmOptions,
    temperatures: Vec<f64>,
}

#[derive(Debug)]
pub struct SampleFactory;

pub fn parse_temperatures(spec: &str) -> Result<Vec<f64>> {
    let temps: Vec<f64> = spec
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| plan_datafusion_err!("sample: temperatures => '{spec}': {e}"))?;
    if temps.is_empty() {
        return plan_err!("sample: temperatures => '{spec}' names no temperature");
    }
    if let Some(t) = temps.iter().find(|t| !valid_temperature(**t)) {
        return plan_err!(
            "sample: option temperatures => '{spec}': {t} is out of range (allowed: [0, 2])"
        );
    }
    Ok(temps)
}

impl StageFactory for SampleFactory {
    fn function_name(&self) -> &'static str {
        "sample"
    }
    fn build(&self, args: &StageArgs, _input: &Schema) -> Result<Arc<dyn RowStage>> {
        let defaults = LlmDefaults {
            few_shot: "none",
            top_k: Some(50),
            top_p: Some(0.95),
            ..Default::default()
        };
        let temperatures = parse_temperatures(&args.str_or("temperatures", DEFAULT_TEMPERATURES))?;
        if args.str("temperature").is_some() {
            return plan_err!(
                "sample: use temperatures => 'a,b,…' (one candidate per temperature)"
            );
        }
        Ok(Arc::new(Sample {
            options: LlmOptions::parse_with(args, &defaults)?,
            temperatures,
        }))
    }
}

#[async_trait]
impl RowStage for Sample {
    fn name(&self) -> &str {
        "sample"
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec!["prompt_id", "prompt"]
    }
    fn output_fields(&self) -> Vec<Field> {
        vec![
            Field::new("sample_idx", DataType::UInt32, true),
            Field::new("num_samples", DataType::UInt32, true),
            Field::new("temperature", DataType::Float64, true),
            Field::new("response", DataType::Utf8, true),
            lineage_field("sample"),
            Field::new("error", DataType::Utf8, true),
        ]
    }
    fn llm_options(&self) -> Option<&LlmOptions> {
        Some(&self.options)
    }

    async fn process(&self, row: InputRow, env: &StageEnv) -> Vec<OutRow> {
        let n = self.temperatures.len() as u32;
        let (Some(prompt_id), Some(turns)) = (row.str("prompt_id"), base_turns(&row)) else {
            let error = upstream_error(&row, "prompt");
            return (0..n)
                .map(|i| {
                    count_error(env, &Some(error.clone()));
                    vec![
                        Cell::U32(Some(i)),
                        Cell::U32(Some(n)),
                        Cell::F64(Some(self.temperatures[i as usize])),
                        text(None),
                        null_lineage(),
                        text(Some(error.clone())),
                    ]
                })
                .collect();
        };
        let calls = self.temperatures.iter().enumerate().map(|(i, t)| {
            let idx = (i as u32).to_le_bytes();
            let mut request = self
                .options
                .request(turns.clone(), &[b"sample", prompt_id.as_bytes(), &idx]);
            request.params.temperature = Some(*t);
            async move {
                let (result, lineage) = call(env, &request).await;
                (i as u32, *t, result, lineage)
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|(i, t, result, lineage)| {
                let (response, error) = match result {
                    Ok(r) => (Some(r), None),
                    Err(e) => (None, Some(format!("sample: {e}"))),
                };
                count_error(env, &error);
                vec![
                    Cell::U32(Some(i)),
                    Cell::U32(Some(n)),
                    Cell::F64(Some(t)),
                    text(response),
                    lineage.into(),
                    text(error),
                ]
            })
            .collect()
    }
}
