//! `sample(input, temperatures => '0.01,0.51,1.01,1.51', …)`: several candidate answers per
//! prompt, one row per candidate, for an AI judge to rank (RL-CAI / RLAIF).
//!
//! Defaults are NeMo-Aligner's: four candidates at those temperatures, top_k 50, top_p 0.95.
//! A prompt's candidates are requested together and leave together, so a downstream `judge`
//! can start on a prompt as soon as its candidates are in.

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::Result;

use crate::output_row;
use crate::stage::options::valid_temperature;
use crate::stage::{
    Emit, InputRow, Llm, LlmDefaults, LlmOptions, LlmStage, Missing, StageArgs, base_turns,
};

pub const DEFAULT_TEMPERATURES: &str = "0.01,0.51,1.01,1.51";

#[derive(Debug)]
pub struct Sample {
    options: LlmOptions,
    temperatures: Vec<f64>,
}

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

output_row! {
    /// One candidate.
    pub struct Candidate {
        sample_idx: Option<u32>,
        num_samples: Option<u32>,
        temperature: Option<f64>,
        response: Option<String>,
    }
}

impl Sample {
    fn candidate(&self, i: usize, response: Option<String>) -> Candidate {
        Candidate {
            sample_idx: Some(i as u32),
            num_samples: Some(self.temperatures.len() as u32),
            temperature: self.temperatures.get(i).copied(),
            response,
        }
    }
}

#[async_trait]
impl LlmStage for Sample {
    const NAME: &'static str = "sample";
    type Row = Candidate;

    fn build(args: &StageArgs, _input: &Schema) -> Result<Self> {
        let defaults = LlmDefaults {
            few_shot: Some("none"),
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
        Ok(Sample {
            options: LlmOptions::parse_with(args, &defaults)?,
            temperatures,
        })
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn required_columns(&self) -> Vec<&'static str> {
        vec!["prompt_id", "prompt"]
    }
    /// Every candidate, each with the upstream error.
    fn skipped(&self, _row: &InputRow) -> Vec<Candidate> {
        (0..self.temperatures.len())
            .map(|i| self.candidate(i, None))
            .collect()
    }

    async fn process(
        &self,
        row: &InputRow,
        llm: &Llm<'_>,
    ) -> Result<Vec<Emit<Candidate>>, Missing> {
        let (Some(prompt_id), Some(turns)) = (row.str("prompt_id"), base_turns(row)) else {
            return Err(Missing("prompt"));
        };
        let calls = self.temperatures.iter().enumerate().map(|(i, t)| {
            let idx = (i as u32).to_le_bytes();
            let mut request = self
                .options
                .request(turns.clone(), &[b"sample", prompt_id.as_bytes(), &idx]);
            request.params.temperature = Some(*t);
            async move { (i, llm.call(&request).await) }
        });
        Ok(futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|(i, reply)| reply.emit(|response| self.candidate(i, response)))
            .collect())
    }
}
