//! Principle mode (the CAI paper, §4.1): every pair of candidates is compared under a
//! principle drawn per comparison, as a multiple choice between (A) and (B). The soft label
//! is P(A) / (P(A) + P(B)) from the answer token's `top_logprobs`.
//!
//! With `cot` the judge first writes its reasoning ("Let's think step by step"); a second,
//! one-token request with that reasoning in context reads the choice's probabilities. With
//! `audit` each comparison is asked with each candidate as (A) — the drawn order's request
//! is the one made without audit, so audit adds requests and never changes them.

use caiflow_llm::{ChatRequest, Message};

use super::{Candidate, Judge, Judgement, join_reasoning};
use crate::stage::{ComparisonCell, Lineage, Llm};

const ANSWER_LETTER: &str = "Answer with a single letter, A or B.";
const STEP_BY_STEP: &str = "Let's think step by step, then end with the answer, (A) or (B).";
const SO_WHICH: &str = "So which response is better? Answer with a single letter, A or B.";

/// P(A) / (P(A) + P(B)) from the first generated position whose top tokens include either
/// letter (tokens like `A`, ` A`, `(A`, `A)` count).
pub fn option_a_probability(top: &[Vec<(String, f64)>]) -> Option<f64> {
    for position in top {
        let (mut a, mut b) = (0.0, 0.0);
        for (token, logprob) in position {
            match letter(token) {
                Some(true) => a += logprob.exp(),
                Some(false) => b += logprob.exp(),
                None => {}
            }
        }
        if a + b > 0.0 {
            return Some(a / (a + b));
        }
    }
    None
}

/// `Some(true)` for a token that is the letter A, `Some(false)` for B.
fn letter(token: &str) -> Option<bool> {
    let t = token
        .trim()
        .trim_matches(|c: char| c == '(' || c == ')' || c == '.' || c == ':' || c == '*');
    match t {
        "A" | "a" => Some(true),
        "B" | "b" => Some(false),
        _ => None,
    }
}

/// The option a written answer settles on: the last `(A)` or `(B)` in it, else its first
/// word when that is a letter. `Some(true)` for A.
pub fn written_choice(text: &str) -> Option<bool> {
    let a = text.rfind("(A)");
    let b = text.rfind("(B)");
    match (a, b) {
        (Some(a), Some(b)) => Some(a > b),
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
        (None, None) => text.split_whitespace().next().and_then(letter),
    }
}

/// One order of one comparison, answered.
struct Answer {
    /// P(the candidate shown as (A) preferred).
    p_a: f64,
    /// The written choice: (A) or not.
    hard_a: Option<bool>,
    lineage: Option<Lineage>,
    /// The model's own thinking (reasoning models).
    reasoning: Vec<String>,
    /// The step-by-step reasoning it wrote (`cot`).
    cot: Option<String>,
}

impl Judge {
    /// The multiple-choice question over (A) and (B).
    fn question(&self, context: &str, principle: &str, a: &str, b: &str) -> String {
        let ask = if self.cot {
            STEP_BY_STEP
        } else {
            ANSWER_LETTER
        };
        format!(
            "Consider this conversation between a human and an AI assistant.\n\n{context}\n\n{principle}\n\n\
             (A) {a}\n\n(B) {b}\n\n{ask}"
        )
    }

    /// The worked examples (those with two responses) as turns before the question.
    fn principle_examples(&self, principle: &str) -> Vec<Message> {
        let mut turns = vec![];
        for e in self.few_shot.pairs() {
            let (Some(a), Some(b)) = (e.responses.first(), e.responses.get(1)) else {
                continue;
            };
            let shown = e.principle.as_deref().unwrap_or(principle);
            turns.push(Message::user(self.question(
                &format!("Human: {}", e.prompt),
                shown,
                a,
                b,
            )));
            let choice = if e.chosen == 1 { "A" } else { "B" };
            turns.push(Message::assistant(match (&e.reasoning, self.cot) {
                (Some(r), true) => format!("{r}\n\nSo the answer is ({choice})."),
                _ => choice.to_string(),
            }));
        }
        turns
    }

    fn choice_request(&self, mut request: ChatRequest) -> ChatRequest {
        request.params.max_tokens = Some(1);
        request.params.top_logprobs = Some(self.top_logprobs);
        request
    }

    /// Ask one order of a comparison: the answer's probabilities (after the reasoning, with
    /// CoT) and its written choice.
    async fn ask_choice(
        &self,
        llm: &Llm<'_>,
        turns: Vec<Message>,
        key: &[&[u8]],
    ) -> Result<Answer, (String, Option<Lineage>)> {
        let mut reasoning = vec![];
        let mut cot = None;
        let (request, hard_from_reasoning) = if self.cot {
            let mut parts = key.to_vec();
            parts.push(b"cot");
            let think = self.options.request(turns.clone(), &parts);
            let (result, lineage) = llm.complete(&think).await;
            let c = result.map_err(|e| (format!("judge: {e}"), lineage))?;
            reasoning.extend(c.reasoning.clone());
            let mut follow = turns;
            follow.push(Message::assistant(&c.text));
            cot = Some(c.text.clone());
            follow.push(Message::user(SO_WHICH));
            (
                self.choice_request(self.options.request(follow, key)),
                Some(written_choice(&c.text)),
            )
        } else {
            (self.choice_request(self.options.request(turns, key)), None)
        };
        let (result, lineage) = llm.complete(&request).await;
        let completion = result.map_err(|e| (format!("judge: {e}"), lineage.clone()))?;
        reasoning.extend(completion.reasoning.clone());
        let Some(top) = completion.top_logprobs.as_ref().filter(|t| !t.is_empty()) else {
            let name = llm
                .env()
                .endpoint
                .as_ref()
                .map(|e| e.name.as_str())
                .unwrap_or("?");
            return Err((
                format!(
                    "judge: endpoint '{name}' returned no logprobs; principle mode needs a server that returns top_logprobs"
                ),
                lineage,
            ));
        };
        let Some(p_a) = option_a_probability(top) else {
            return Err((
                format!(
                    "judge: neither A nor B among the top {} tokens (answer {:?})",
                    self.top_logprobs, completion.text
                ),
                lineage,
            ));
        };
        let hard_a = hard_from_reasoning
            .flatten()
            .or_else(|| written_choice(&completion.text));
        Ok(Answer {
            p_a,
            hard_a,
            cot,
            lineage,
            reasoning,
        })
    }

    pub(super) async fn by_principles(
        &self,
        llm: &Llm<'_>,
        prompt_id: &str,
        context: &str,
        shown: &[Candidate],
    ) -> Judgement {
        let n = shown.len();
        let order: Vec<u32> = shown.iter().map(|c| c.sample_idx).collect();
        let mut comparisons = vec![];
        for a in 0..n {
            for b in a + 1..n {
                for k in 0..self.samples_per_comparison {
                    comparisons.push((a, b, k));
                }
            }
        }
        let seed = self.options.seed.to_le_bytes();
        let calls = comparisons.iter().map(|&(a, b, k)| {
            let key = format!("{a}-{b}-{k}");
            let draw = |what: &[u8]| {
                crate::keys::unit_interval(&[what, &seed, prompt_id.as_bytes(), key.as_bytes()])
            };
            let count = self.principles.len();
            let principle = self.principles
                [((draw(b"judge-principle") * count as f64) as usize).min(count.saturating_sub(1))]
            .clone();
            // Which candidate is (A) is drawn too, so position bias averages out; an audit
            // asks the other order as well.
            let swap = draw(b"judge-swap") < 0.5;
            let mut orders = vec![swap];
            if self.audit {
                orders.push(!swap);
            }
            async move {
                let mut answers = vec![];
                for (i, &flipped) in orders.iter().enumerate() {
                    let (first, second) = if flipped { (b, a) } else { (a, b) };
                    let mut turns = self.principle_examples(&principle);
                    turns.push(Message::user(self.question(
                        context,
                        &principle,
                        &shown[first].response,
                        &shown[second].response,
                    )));
                    let audit_key = format!("{key}-audit");
                    let parts: Vec<&[u8]> = if i == 0 {
                        vec![b"judge-principle", prompt_id.as_bytes(), key.as_bytes()]
                    } else {
                        vec![
                            b"judge-principle",
                            prompt_id.as_bytes(),
                            audit_key.as_bytes(),
                        ]
                    };
                    let answer = self.ask_choice(llm, turns, &parts).await;
                    answers.push((flipped, answer));
                }
                (a, b, principle, answers)
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut pref = vec![vec![(0.0f64, 0u32); n]; n]; // pref[i][j]: sum of P(i over j), count
        let mut raw = vec![];
        let mut cells = vec![];
        let mut lineage = None;
        let mut reasoning = vec![];
        let mut explanations = vec![];
        for (a, b, principle, answers) in results {
            let mut cell = ComparisonCell {
                principle: Some(principle),
                a: Some(shown[a].sample_idx),
                b: Some(shown[b].sample_idx),
                ..Default::default()
            };
            let mut sum = 0.0;
            for (i, (flipped, answer)) in answers.into_iter().enumerate() {
                let answer = match answer {
                    Ok(x) => x,
                    Err((why, l)) => return Judgement::failed(n, order, why, l),
                };
                lineage = answer.lineage;
                reasoning.extend(answer.reasoning);
                if let Some(text) = answer.cot {
                    // Which candidate the reasoning calls (A): a, unless the order was flipped.
                    let (first, second) = if flipped { (b, a) } else { (a, b) };
                    explanations.push(format!(
                        "(A) = candidate {}, (B) = candidate {}: {text}",
                        shown[first].sample_idx, shown[second].sample_idx
                    ));
                }
                // P(candidate a preferred over b), whichever was shown first.
                let mut p = if flipped {
                    1.0 - answer.p_a
                } else {
                    answer.p_a
                };
                if let Some((lo, hi)) = self.clamp {
                    p = p.clamp(lo, hi);
                }
                sum += p;
                if flipped {
                    cell.p_b_first = Some(p);
                } else {
                    cell.p_a_first = Some(p);
                }
                if i == 0 {
                    let hard_a = answer.hard_a.map(|first_won| first_won != flipped);
                    cell.hard_a = hard_a;
                    cell.agree = hard_a.map(|h| h == (p > 0.5));
                }
            }
            let asked = if self.audit { 2.0 } else { 1.0 };
            let p_ab = sum / asked;
            if let (Some(x), Some(y)) = (cell.p_a_first, cell.p_b_first) {
                cell.consistent = Some((x > 0.5) == (y > 0.5));
            }
            cell.p_ab = Some(p_ab);
            pref[a][b].0 += p_ab;
            pref[a][b].1 += 1;
            pref[b][a].0 += 1.0 - p_ab;
            pref[b][a].1 += 1;
            raw.push(serde_json::json!({"a": shown[a].sample_idx, "b": shown[b].sample_idx, "p_a_over_b": p_ab}));
            cells.push(cell);
        }
        let prob = |i: usize, j: usize| {
            if pref[i][j].1 == 0 {
                0.5
            } else {
                pref[i][j].0 / pref[i][j].1 as f64
            }
        };
        let scores: Vec<f64> = (0..n)
            .map(|i| (0..n).filter(|j| *j != i).map(|j| prob(i, j)).sum::<f64>() / (n - 1) as f64)
            .collect();
        let best = (0..n)
            .max_by(|x, y| scores[*x].total_cmp(&scores[*y]).then(y.cmp(x)))
            .unwrap_or(0);
        let worst = (0..n)
            .min_by(|x, y| scores[*x].total_cmp(&scores[*y]).then(x.cmp(y)))
            .unwrap_or(0);
        let tie = (scores[best] - scores[worst]).abs() < 1e-12;
        Judgement {
            num_candidates: n as u32,
            order,
            chosen: Some(shown[best].clone()),
            rejected: Some(shown[if tie { best } else { worst }].clone()),
            label: if tie { "tie" } else { "ok" },
            chosen_prob: Some(if tie { 0.5 } else { prob(best, worst) }),
            // The CoT reasoning of every comparison, in order.
            explanation: (!explanations.is_empty()).then(|| explanations.join("\n\n")),
            raw: Some(serde_json::json!({ "pairs": raw, "scores": scores }).to_string()),
            comparisons: cells,
            lineage,
            reasoning: join_reasoning(reasoning),
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn letter_probabilities_are_normalized() {
        let top = vec![vec![
            ("The".to_string(), -0.1),
            (" A".to_string(), (0.3f64).ln()),
            ("(B".to_string(), (0.1f64).ln()),
        ]];
        let p = option_a_probability(&top).unwrap();
        assert!((p - 0.75).abs() < 1e-9, "{p}");
        assert_eq!(option_a_probability(&[vec![("C".to_string(), -0.1)]]), None);
    }

    #[test]
    fn written_choices() {
        assert_eq!(
            written_choice("(A) is rude, so the answer is (B)."),
            Some(false)
        );
        assert_eq!(written_choice("B"), Some(false));
        assert_eq!(written_choice("A."), Some(true));
        assert_eq!(written_choice("Neither."), None);
    }

    proptest! {
        #[test]
        fn any_answer_reads_without_panic(text in "\\PC{0,200}", lp in -50.0f64..0.0) {
            let _ = written_choice(&text);
            let p = option_a_probability(&[vec![(text.clone(), lp), ("B".into(), lp)]]);
            if let Some(p) = p { prop_assert!((0.0..=1.0).contains(&p)); }
        }
    }
}
