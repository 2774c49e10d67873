//! Per-request sampling: the sampler chain from a request's parameters (llama.cpp server's
//! defaults where a parameter is unset), log-probabilities from raw logits, and stop strings.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

use caiflow_llm::SamplingParams;

/// llama.cpp server defaults, so an unset parameter behaves as it would over HTTP.
const DEFAULT_TEMPERATURE: f64 = 0.8;
const DEFAULT_TOP_K: u32 = 40;
const DEFAULT_TOP_P: f64 = 0.95;
const DEFAULT_MIN_P: f32 = 0.05;

/// The sampler for one request. Temperature 0 is greedy; a seed makes sampling repeatable;
/// a `response_format` JSON schema becomes a grammar that constrains every token.
pub fn sampler_for(model: &LlamaModel, params: &SamplingParams) -> Result<LlamaSampler, String> {
    let mut chain = Vec::new();
    if let Some(grammar) = params
        .response_format
        .as_ref()
        .map(grammar_for)
        .transpose()?
        .flatten()
    {
        chain.push(
            LlamaSampler::grammar(model, &grammar, "root")
                .map_err(|e| format!("response_format: grammar rejected: {e}"))?,
        );
    }
    let temperature = params.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        let top_k = params.top_k.unwrap_or(DEFAULT_TOP_K);
        if top_k > 0 {
            chain.push(LlamaSampler::top_k(top_k.min(i32::MAX as u32) as i32));
        }
        chain.push(LlamaSampler::top_p(
            params.top_p.unwrap_or(DEFAULT_TOP_P) as f32,
            1,
        ));
        chain.push(LlamaSampler::min_p(DEFAULT_MIN_P, 1));
        chain.push(LlamaSampler::temp(temperature as f32));
        let seed = params.seed.map_or_else(rand::random::<u32>, fold_seed);
        chain.push(LlamaSampler::dist(seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

/// llama.cpp seeds are 32-bit; fold a 64-bit seed so both halves count.
fn fold_seed(seed: u64) -> u32 {
    ((seed >> 32) ^ (seed & 0xffff_ffff)) as u32
}

/// The GBNF grammar for an OpenAI `response_format`: `json_schema` (its schema) or
/// `json_object` (any JSON object, or the schema it carries); `text` constrains nothing.
fn grammar_for(format: &serde_json::Value) -> Result<Option<String>, String> {
    let schema = match format.get("type").and_then(|t| t.as_str()) {
        Some("json_schema") => format
            .get("json_schema")
            .and_then(|j| j.get("schema"))
            .cloned()
            .ok_or("response_format json_schema has no json_schema.schema")?,
        Some("json_object") => format
            .get("schema")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        Some("text") => return Ok(None),
        None => return Err("response_format has no \"type\"".into()),
        Some(other) => return Err(format!("response_format type '{other}' is not supported")),
    };
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map(Some)
        .map_err(|e| format!("response_format: cannot turn the schema into a grammar: {e}"))
}

/// The `n` most likely tokens under the raw logits, with their log-probabilities
/// (log-softmax), most likely first.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(usize, f64)> {
    if logits.is_empty() || n == 0 {
        return Vec::new();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(n + 1);
    for (id, &l) in logits.iter().enumerate() {
        if best.len() == n && best.last().is_some_and(|&(_, worst)| l <= worst) {
            continue;
        }
        let at = best.partition_point(|&(_, v)| v >= l);
        best.insert(at, (id, l));
        best.truncate(n);
    }
    best.into_iter()
        .map(|(id, l)| (id, l as f64 - log_z))
        .collect()
}

/// Where the earliest stop string starts in `text`, if any has appeared.
pub fn stop_at(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_are_sorted_log_softmax() {
        let logits = [1.0f32, 3.0, 2.0, 0.5];
        let top = top_logprobs(&logits, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((top[0].1 - (3.0f64.exp() / z).ln()).abs() < 1e-9);
        assert_eq!(top_logprobs(&logits, 10).len(), 4);
    }

    #[test]
    fn earliest_stop_wins() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(stop_at("a\n\nb END", &stops), Some(1));
        assert_eq!(stop_at("abc", &stops), None);
    }

    #[test]
    fn seeds_fold_and_formats_map() {
        assert_ne!(fold_seed(1), fold_seed(1 << 32 | 2));
        assert!(grammar_for(&serde_json::json!({"type": "xml"})).is_err());
        assert!(grammar_for(&serde_json::json!({"type": "json_schema"})).is_err());
        assert_eq!(grammar_for(&serde_json::json!({"type": "text"})), Ok(None));
    }
}
