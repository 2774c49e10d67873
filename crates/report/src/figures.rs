//! The figures of a run's report, computed in one streaming pass over each table they come
//! from: the state is a few counters per round, principle, label, position and temperature,
//! never the rows.

use std::collections::{BTreeMap, HashSet};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt64Type};
use serde::{Deserialize, Serialize};

use crate::config::ReportConfig;
use caiflow_engine::stage::columns::TextColumn;

use crate::error::{ReportError, Result};

/// Upper edges (characters) of the length histograms' bins; the last bin is open.
pub const LENGTH_EDGES: [u64; 7] = [100, 200, 400, 800, 1600, 3200, 6400];

/// A histogram: `counts[i]` is the number of values in bin `labels[i]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub labels: Vec<String>,
    pub counts: Vec<u64>,
}

impl Histogram {
    fn lengths() -> Self {
        let mut labels = vec![];
        let mut lo = 0;
        for hi in LENGTH_EDGES {
            labels.push(format!("{lo}-{}", hi - 1));
            lo = hi;
        }
        labels.push(format!("{lo}+"));
        Histogram {
            counts: vec![0; labels.len()],
            labels,
        }
    }

    fn add_length(&mut self, chars: u64) {
        let bin = LENGTH_EDGES
            .iter()
            .position(|hi| chars < *hi)
            .unwrap_or(LENGTH_EDGES.len());
        self.counts[bin] += 1;
    }

    /// Ten bins over [0, 1].
    fn unit() -> Self {
        Histogram {
            labels: (0..10)
                .map(|i| format!("{:.1}-{:.1}", i as f64 / 10.0, (i + 1) as f64 / 10.0))
                .collect(),
            counts: vec![0; 10],
        }
    }

    fn add_unit(&mut self, p: f64) {
        let bin = ((p * 10.0).floor().max(0.0) as usize).min(9);
        self.counts[bin] += 1;
    }
}

/// The share of answers that are refusals: initial responses and revisions (null when
/// there are none: a later round's rows hold no initial response of their own).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Refusals {
    pub response: Option<f64>,
    pub revision: Option<f64>,
}

/// SL-CAI figures of one round (or of all rounds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundFigures {
    pub rows: u64,
    pub error_rows: u64,
    pub refusal_rate: Refusals,
    pub unchanged_revision_rate: Option<f64>,
    pub response_length: Histogram,
    pub revision_length: Histogram,
}

/// Response and revision lengths (characters).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthHistograms {
    pub response: Histogram,
    pub revision: Histogram,
}

/// SL-CAI figures of a table with `response`, `revision`, `principle_id` and `round` (its
/// keys are top-level keys of report.json).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlFigures {
    pub sl_table: String,
    pub sl_rows: u64,
    pub sl_error_rows: u64,
    pub refusal_rate: Refusals,
    pub unchanged_revision_rate: Option<f64>,
    pub length_histograms: LengthHistograms,
    /// Round → the same figures for that round's rows.
    pub by_round: BTreeMap<u32, RoundFigures>,
    /// Principle id → revision rows.
    pub principles: BTreeMap<String, u64>,
    /// Principle id → mean revision length / response length (characters).
    pub principle_length_ratio: BTreeMap<String, f64>,
}

/// RL-CAI figures of a `judge` output table (its keys are top-level keys of report.json).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RlFigures {
    pub rl_table: String,
    /// Rows of the table: one per prompt.
    pub judged_prompts: u64,
    /// `ok` / `tie` / `error` → rows.
    pub labels: BTreeMap<String, u64>,
    /// Position (1 = shown first) → ok rows whose chosen / rejected was shown there.
    pub chosen_position: BTreeMap<u32, u64>,
    pub rejected_position: BTreeMap<u32, u64>,
    /// Mean chosen length / mean rejected length over ok rows (characters).
    pub length_ratio: Option<f64>,
    /// Candidate temperature → share of ok rows offering one at it where it was chosen.
    pub chosen_rate_by_temperature: BTreeMap<String, f64>,
    /// `chosen_prob` of rows that have one (principle mode).
    pub chosen_prob_histogram: Option<Histogram>,
}

/// Whether answers are refusals, by the configured phrases.
pub struct RefusalPhrases(Vec<String>);

impl RefusalPhrases {
    pub fn new(config: &ReportConfig) -> Self {
        RefusalPhrases(config.refusal_phrases.iter().map(|p| fold(p)).collect())
    }

    pub fn is_refusal(&self, text: &str) -> bool {
        let t = fold(text);
        self.0
            .iter()
            .any(|p| !p.is_empty() && t.contains(p.as_str()))
    }
}

/// Lower case with typographic apostrophes made straight.
fn fold(text: &str) -> String {
    text.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'")
}

/// Case and whitespace folded.
fn normalized(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn shingles(text: &str) -> HashSet<&str> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    if bounds.len() <= 3 {
        return HashSet::from([text]);
    }
    (0..bounds.len() - 3)
        .map(|i| &text[bounds[i]..bounds[i + 3]])
        .collect()
}

/// Whether a revision is (nearly) the response: equal after normalization, or similar by
/// the Jaccard similarity of character 3-shingles.
pub fn unchanged(response: &str, revision: &str, similarity: f64) -> bool {
    let (a, b) = (normalized(response), normalized(revision));
    if a == b {
        return true;
    }
    let (sa, sb) = (shingles(&a), shingles(&b));
    let inter = sa.intersection(&sb).count();
    let union = sa.len() + sb.len() - inter;
    union > 0 && inter as f64 / union as f64 >= similarity
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<TextColumn> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ReportError::Table(format!("no column {name}")))?;
    TextColumn::of(c.as_ref()).ok_or_else(|| ReportError::Table(format!("{name} is not text")))
}

fn u64_column(
    batch: &RecordBatch,
    name: &str,
) -> Result<datafusion::arrow::array::PrimitiveArray<UInt64Type>> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ReportError::Table(format!("no column {name}")))?;
    Ok(cast(c, &DataType::UInt64)?
        .as_primitive::<UInt64Type>()
        .clone())
}

fn f64_column(
    batch: &RecordBatch,
    name: &str,
) -> Result<datafusion::arrow::array::PrimitiveArray<Float64Type>> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| ReportError::Table(format!("no column {name}")))?;
    Ok(cast(c, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

#[derive(Default)]
struct RoundCounts {
    rows: u64,
    errors: u64,
    responses: u64,
    response_refusals: u64,
    revisions: u64,
    revision_refusals: u64,
    unchanged: u64,
    response_length: Option<Histogram>,
    revision_length: Option<Histogram>,
}

impl RoundCounts {
    fn figures(self) -> RoundFigures {
        let share = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        RoundFigures {
            rows: self.rows,
            error_rows: self.errors,
            refusal_rate: Refusals {
                response: share(self.response_refusals, self.responses),
                revision: share(self.revision_refusals, self.revisions),
            },
            unchanged_revision_rate: share(self.unchanged, self.revisions),
            response_length: self.response_length.unwrap_or_else(Histogram::lengths),
            revision_length: self.revision_length.unwrap_or_else(Histogram::lengths),
        }
    }
}

/// SL-CAI figures, fed batch by batch (`round, principle_id, response, revision, error`).
pub struct SlAccumulator {
    table: String,
    refusals: RefusalPhrases,
    similarity: f64,
    all: RoundCounts,
    rounds: BTreeMap<u32, RoundCounts>,
    principles: BTreeMap<String, (u64, f64, u64)>,
}

impl SlAccumulator {
    pub fn new(table: &str, config: &ReportConfig) -> Self {
        SlAccumulator {
            table: table.to_string(),
            refusals: RefusalPhrases::new(config),
            similarity: config.unchanged_similarity,
            all: RoundCounts::default(),
            rounds: BTreeMap::new(),
            principles: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let round = u64_column(batch, "round")?;
        let principle = text_column(batch, "principle_id")?;
        let response = text_column(batch, "response")?;
        let revision = text_column(batch, "revision")?;
        let error = text_column(batch, "error")?;
        for i in 0..batch.num_rows() {
            let r = if round.is_valid(i) {
                round.value(i) as u32
            } else {
                1
            };
            let (resp, rev) = (response.get(i), revision.get(i));
            // The initial response is the same on every round's row: counted on round 1.
            let first = r <= 1;
            let refusal_resp = first && resp.is_some_and(|t| self.refusals.is_refusal(t));
            let refusal_rev = rev.is_some_and(|t| self.refusals.is_refusal(t));
            let same =
                matches!((resp, rev), (Some(a), Some(b)) if unchanged(a, b, self.similarity));
            for counts in [&mut self.all, self.rounds.entry(r).or_default()] {
                counts.rows += 1;
                counts.errors += error.get(i).is_some() as u64;
                if let (true, Some(t)) = (first, resp) {
                    counts.responses += 1;
                    counts.response_refusals += refusal_resp as u64;
                    counts
                        .response_length
                        .get_or_insert_with(Histogram::lengths)
                        .add_length(t.chars().count() as u64);
                }
                if let Some(t) = rev {
                    counts.revisions += 1;
                    counts.revision_refusals += refusal_rev as u64;
                    counts.unchanged += same as u64;
                    counts
                        .revision_length
                        .get_or_insert_with(Histogram::lengths)
                        .add_length(t.chars().count() as u64);
                }
            }
            if let Some(p) = principle.get(i) {
                let entry = self.principles.entry(p.to_string()).or_default();
                entry.0 += 1;
                if let (Some(a), Some(b)) = (resp, rev) {
                    let a = a.chars().count().max(1) as f64;
                    entry.1 += b.chars().count() as f64 / a;
                    entry.2 += 1;
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> SlFigures {
        let all = self.all.figures();
        SlFigures {
            sl_table: self.table,
            sl_rows: all.rows,
            sl_error_rows: all.error_rows,
            refusal_rate: all.refusal_rate,
            unchanged_revision_rate: all.unchanged_revision_rate,
            length_histograms: LengthHistograms {
                response: all.response_length,
                revision: all.revision_length,
            },
            by_round: self
                .rounds
                .into_iter()
                .map(|(r, c)| (r, c.figures()))
                .collect(),
            principles: self
                .principles
                .iter()
                .map(|(p, (n, _, _))| (p.clone(), *n))
                .collect(),
            principle_length_ratio: self
                .principles
                .iter()
                .filter(|(_, (_, _, n))| *n > 0)
                .map(|(p, (_, sum, n))| (p.clone(), sum / *n as f64))
                .collect(),
        }
    }
}

/// RL-CAI figures, fed batch by batch (a `judge` output).
pub struct RlAccumulator {
    table: String,
    rows: u64,
    labels: BTreeMap<String, u64>,
    chosen_position: BTreeMap<u32, u64>,
    rejected_position: BTreeMap<u32, u64>,
    chosen_chars: u64,
    rejected_chars: u64,
    ok: u64,
    /// Temperature → (offered, chosen).
    temperatures: BTreeMap<String, (u64, u64)>,
    chosen_prob: Option<Histogram>,
}

impl RlAccumulator {
    pub fn new(table: &str) -> Self {
        RlAccumulator {
            table: table.to_string(),
            rows: 0,
            labels: BTreeMap::new(),
            chosen_position: BTreeMap::new(),
            rejected_position: BTreeMap::new(),
            chosen_chars: 0,
            rejected_chars: 0,
            ok: 0,
            temperatures: BTreeMap::new(),
            chosen_prob: None,
        }
    }

    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let label = text_column(batch, "label")?;
        let chosen = text_column(batch, "chosen")?;
        let rejected = text_column(batch, "rejected")?;
        let chosen_idx = u64_column(batch, "chosen_idx")?;
        let rejected_idx = u64_column(batch, "rejected_idx")?;
        let prob = f64_column(batch, "chosen_prob")?;
        let order_col = batch
            .column_by_name("candidate_order")
            .ok_or_else(|| ReportError::Table("no column candidate_order".into()))?;
        let order = cast(
            order_col,
            &DataType::List(std::sync::Arc::new(
                datafusion::arrow::datatypes::Field::new("item", DataType::UInt64, true),
            )),
        )?;
        let order = order.as_list::<i32>();
        let order_values = order.values().as_primitive::<UInt64Type>();
        let candidates = batch
            .column_by_name("candidates")
            .ok_or_else(|| ReportError::Table("no column candidates".into()))?
            .as_list_opt::<i32>()
            .ok_or_else(|| ReportError::Table("candidates is not a list".into()))?;
        let items = candidates
            .values()
            .as_struct_opt()
            .ok_or_else(|| ReportError::Table("candidates' items are not structs".into()))?;
        let column = |name: &str| {
            items
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| ReportError::Table(format!("candidates have no field {name}")))
        };
        let item_idx = cast(&column("sample_idx")?, &DataType::UInt64)?;
        let item_idx = item_idx.as_primitive::<UInt64Type>();
        let item_temp = cast(&column("temperature")?, &DataType::Float64)?;
        let item_temp = item_temp.as_primitive::<Float64Type>();
        let item_response = column("response")?;
        for i in 0..batch.num_rows() {
            self.rows += 1;
            let l = label.get(i).unwrap_or("null");
            *self.labels.entry(l.to_string()).or_default() += 1;
            if prob.is_valid(i) {
                self.chosen_prob
                    .get_or_insert_with(Histogram::unit)
                    .add_unit(prob.value(i));
            }
            if l != "ok" || !chosen_idx.is_valid(i) || !rejected_idx.is_valid(i) {
                continue;
            }
            self.ok += 1;
            let (c, r) = (chosen_idx.value(i), rejected_idx.value(i));
            let shown = order.value_offsets();
            let (start, end) = (shown[i] as usize, shown[i + 1] as usize);
            for (p, k) in (start..end).enumerate() {
                if order_values.is_valid(k) && order_values.value(k) == c {
                    *self.chosen_position.entry(p as u32 + 1).or_default() += 1;
                }
                if order_values.is_valid(k) && order_values.value(k) == r {
                    *self.rejected_position.entry(p as u32 + 1).or_default() += 1;
                }
            }
            self.chosen_chars += chosen.get(i).map_or(0, |t| t.chars().count() as u64);
            self.rejected_chars += rejected.get(i).map_or(0, |t| t.chars().count() as u64);
            let offsets = candidates.value_offsets();
            for k in offsets[i] as usize..offsets[i + 1] as usize {
                if !item_temp.is_valid(k) || !item_response.is_valid(k) {
                    continue;
                }
                let t = format!("{}", item_temp.value(k));
                let entry = self.temperatures.entry(t).or_default();
                entry.0 += 1;
                entry.1 += (item_idx.is_valid(k) && item_idx.value(k) == c) as u64;
            }
        }
        Ok(())
    }

    pub fn finish(self) -> RlFigures {
        RlFigures {
            rl_table: self.table,
            judged_prompts: self.rows,
            labels: self.labels,
            chosen_position: self.chosen_position,
            rejected_position: self.rejected_position,
            length_ratio: (self.ok > 0 && self.rejected_chars > 0)
                .then(|| self.chosen_chars as f64 / self.rejected_chars as f64),
            chosen_rate_by_temperature: self
                .temperatures
                .into_iter()
                .map(|(t, (offered, chosen))| (t, chosen as f64 / offered.max(1) as f64))
                .collect(),
            chosen_prob_histogram: self.chosen_prob,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_means_equal_or_nearly() {
        assert!(unchanged("I can't help.", " i CAN'T   help. ", 0.9));
        assert!(unchanged(
            "Picking a lock you do not own is illegal, and I will not explain it.",
            "Picking a lock you do not own is illegal, and I will not explain it!",
            0.9
        ));
        assert!(!unchanged(
            "Sure, here is how.",
            "I will not help with that.",
            0.9
        ));
    }

    #[test]
    fn refusals_fold_case_and_apostrophes() {
        let r = RefusalPhrases::new(&ReportConfig::default());
        assert!(r.is_refusal("Sorry, I CAN\u{2019}T do that."));
        assert!(!r.is_refusal("Here is a recipe for bread."));
    }

    #[test]
    fn lengths_fall_in_their_bins() {
        let mut h = Histogram::lengths();
        for n in [0, 99, 100, 6399, 6400, 100_000] {
            h.add_length(n);
        }
        assert_eq!(h.counts, vec![2, 1, 0, 0, 0, 0, 1, 2]);
        assert_eq!(h.labels.first().map(String::as_str), Some("0-99"));
        assert_eq!(h.labels.last().map(String::as_str), Some("6400+"));
    }
}
