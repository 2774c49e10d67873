//! Constitution mode (NeMo-Aligner): the whole judge constitution as the system message, all
//! candidates in one request, `{"chosen": i, "rejected": j}` back. With `cot` the judge
//! reasons first and ends with the verdict; with `audit` the candidates are shown a second
//! time in reverse order and the two verdicts compared.

use caiflow_llm::Message;

use super::{Candidate, Judge, Judgement, join_reasoning};
use crate::parse::verdict::{Verdict, parse_verdict};
use crate::progress::StageProgress;
use crate::stage::{ComparisonCell, Lineage, Llm};

/// The JSON schema of a verdict over `n` responses. The explanation is called `why` so that
/// it sorts after `chosen` and `rejected`: JSON objects here keep keys sorted, grammar-based
/// decoders (llama.cpp) emit properties in the order given, and a long explanation first
/// could use up `max_tokens` before the ids are written. With CoT the reasoning comes first,
/// as `analysis` (sorted before `chosen`).
fn verdict_format(n: usize, cot: bool) -> serde_json::Value {
    let id = serde_json::json!({"type": "integer", "minimum": 1, "maximum": n});
    let text = serde_json::json!({"type": "string", "maxLength": 400});
    let (properties, required) = if cot {
        (
            serde_json::json!({"analysis": {"type": "string", "maxLength": 1200}, "chosen": id, "rejected": id}),
            serde_json::json!(["analysis", "chosen", "rejected"]),
        )
    } else {
        (
            serde_json::json!({"chosen": id, "rejected": id, "why": text}),
            serde_json::json!(["chosen", "rejected", "why"]),
        )
    };
    serde_json::json!({
        "type": "json_schema",
        "json_schema": {
            "name": "verdict",
            "schema": {"type": "object", "properties": properties, "required": required}
        }
    })
}

/// The text from the last verdict dict on: a CoT answer reasons first (and may mention
/// braces), then gives its verdict.
fn last_verdict(text: &str) -> &str {
    text.rfind("chosen")
        .and_then(|at| text.get(..at))
        .and_then(|before| before.rfind('{'))
        .and_then(|start| text.get(start..))
        .unwrap_or(text)
}

/// The question: the prompt (or conversation) and the responses in shown order.
fn listing(head: &str, responses: &[&str], cot: bool) -> String {
    let n = responses.len();
    let mut text = format!("{head}\n\n");
    for (i, r) in responses.iter().enumerate() {
        text.push_str(&format!("Response {}:\n{r}\n\n", i + 1));
    }
    if cot {
        text.push_str(&format!(
            "Let's think step by step about which response is the most harmless and which the most harmful. Then end with your verdict as {{\"chosen\": x, \"rejected\": y}} with x and y between 1 and {n}."
        ));
    } else {
        text.push_str(&format!(
            "Give your verdict as {{\"chosen\": x, \"rejected\": y}} with x and y between 1 and {n}, then explain it."
        ));
    }
    text
}

/// One verdict read: the picks (shown positions, 1-based) or why none was.
struct Asked {
    verdict: Option<Verdict>,
    explanation: Option<String>,
    raw: String,
    reason: String,
    lineage: Option<Lineage>,
    reasoning: Vec<String>,
    attempt: u32,
}

impl Judge {
    /// The worked examples as turns before the question.
    fn constitution_examples(&self) -> Vec<Message> {
        let mut turns = vec![];
        for e in &self.few_shot.examples {
            let responses: Vec<&str> = e.responses.iter().map(String::as_str).collect();
            turns.push(Message::user(listing(
                &format!("Prompt:\n{}", e.prompt),
                &responses,
                self.cot,
            )));
            let verdict = format!(
                "{{\"chosen\": {}, \"rejected\": {}}}",
                e.chosen,
                e.rejected()
            );
            let why = e
                .explanation
                .as_deref()
                .or(e.reasoning.as_deref())
                .unwrap_or_default();
            turns.push(Message::assistant(if self.cot {
                format!("{}\n\n{verdict}", e.reasoning.as_deref().unwrap_or(why))
            } else {
                format!("{verdict} {why}").trim().to_string()
            }));
        }
        turns
    }

    /// Ask for a verdict over `shown`, again on an unreadable answer (`attempts`).
    async fn ask_verdict(
        &self,
        llm: &Llm<'_>,
        key: &[&[u8]],
        head: &str,
        shown: &[Candidate],
    ) -> Result<Asked, (String, Option<Lineage>)> {
        let n = shown.len();
        let responses: Vec<&str> = shown.iter().map(|c| c.response.as_str()).collect();
        let mut turns = self.constitution_examples();
        turns.push(Message::user(listing(head, &responses, self.cot)));
        let mut asked = Asked {
            verdict: None,
            explanation: None,
            raw: String::new(),
            reason: String::new(),
            lineage: None,
            reasoning: vec![],
            attempt: 0,
        };
        for attempt in 1..=self.attempts {
            let attempt_bytes = attempt.to_le_bytes();
            let mut parts = key.to_vec();
            parts.push(&attempt_bytes);
            let mut request = self.options.request(turns.clone(), &parts);
            if self.structured {
                request.params.response_format = Some(verdict_format(n, self.cot));
            }
            let (result, lineage) = llm.complete(&request).await;
            let completion = result.map_err(|e| (format!("judge: {e}"), lineage.clone()))?;
            asked.lineage = lineage;
            asked.attempt = attempt;
            asked.reasoning.extend(completion.reasoning.clone());
            let raw = completion.text;
            let (text, before) = if self.cot {
                let verdict = last_verdict(&raw);
                let before = raw
                    .get(..raw.len().saturating_sub(verdict.len()))
                    .unwrap_or_default();
                (verdict, before.trim())
            } else {
                (raw.as_str(), "")
            };
            match parse_verdict(text, n) {
                Ok((verdict, explanation)) => {
                    let explanation = if before.is_empty() {
                        explanation
                    } else {
                        before.to_string()
                    };
                    asked.verdict = Some(verdict);
                    asked.explanation = Some(explanation).filter(|e| !e.is_empty());
                    asked.raw = raw;
                    return Ok(asked);
                }
                Err(reason) => {
                    turns.push(Message::assistant(&raw));
                    turns.push(Message::user(format!(
                        "I could not read a valid verdict ({reason}). Answer again, starting with \
                         {{\"chosen\": x, \"rejected\": y}} where x and y are response numbers from 1 to {n}."
                    )));
                    asked.raw = raw;
                    asked.reason = reason;
                }
            }
        }
        Ok(asked)
    }

    pub(super) async fn by_constitution(
        &self,
        llm: &Llm<'_>,
        prompt_id: &str,
        head: &str,
        shown: &[Candidate],
    ) -> Judgement {
        let n = shown.len();
        let order: Vec<u32> = shown.iter().map(|c| c.sample_idx).collect();
        let asked = match self
            .ask_verdict(llm, &[b"judge", prompt_id.as_bytes()], head, shown)
            .await
        {
            Ok(a) => a,
            Err((why, lineage)) => return Judgement::failed(n, order, why, lineage),
        };
        let Some(verdict) = asked.verdict else {
            let mut j = Judgement::error(
                n as u32,
                order,
                format!(
                    "judge: no valid verdict after {} attempt(s): {}",
                    self.attempts, asked.reason
                ),
            );
            j.raw = Some(asked.raw);
            j.lineage = asked.lineage;
            return j;
        };
        // The asks this verdict did not need: a dry run's range of requests.
        StageProgress::add(
            &llm.env().progress.possible_reasks,
            u64::from(self.attempts - asked.attempt),
        );
        let mut j = Judgement {
            num_candidates: n as u32,
            order,
            explanation: asked.explanation,
            raw: Some(asked.raw),
            lineage: asked.lineage,
            ..Default::default()
        };
        let mut reasoning = asked.reasoning;
        let picks = match verdict {
            Verdict::Pick { chosen, rejected } => {
                j.label = "ok";
                (shown[chosen - 1].clone(), shown[rejected - 1].clone())
            }
            // A tie stays a tie: the same candidate on both sides, labelled so.
            Verdict::Tie(id) => {
                j.label = "tie";
                (shown[id - 1].clone(), shown[id - 1].clone())
            }
        };
        if self.audit {
            // The same question with the candidates in reverse order.
            let reversed: Vec<Candidate> = shown.iter().rev().cloned().collect();
            let again = self
                .ask_verdict(
                    llm,
                    &[b"judge", prompt_id.as_bytes(), b"audit-reversed"],
                    head,
                    &reversed,
                )
                .await;
            let consistent = match &again {
                Ok(Asked {
                    verdict: Some(Verdict::Pick { chosen, rejected }),
                    ..
                }) => Some(
                    reversed[chosen - 1].sample_idx == picks.0.sample_idx
                        && reversed[rejected - 1].sample_idx == picks.1.sample_idx,
                ),
                Ok(Asked {
                    verdict: Some(Verdict::Tie(_)),
                    ..
                }) => Some(j.label == "tie"),
                _ => None,
            };
            if let Ok(a) = again {
                reasoning.extend(a.reasoning);
            }
            j.comparisons.push(ComparisonCell {
                principle: Some("constitution".into()),
                a: Some(picks.0.sample_idx),
                b: Some(picks.1.sample_idx),
                hard_a: Some(true),
                consistent,
                ..Default::default()
            });
        }
        j.chosen = Some(picks.0);
        j.rejected = Some(picks.1);
        j.reasoning = join_reasoning(reasoning);
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_verdict_follows_the_reasoning() {
        let text = "Response 1 says {a} and is chosen badly... so {\"chosen\": 2, \"rejected\": 1}";
        assert_eq!(last_verdict(text), "{\"chosen\": 2, \"rejected\": 1}");
        assert_eq!(last_verdict("no verdict"), "no verdict");
        assert_eq!(last_verdict("chosen: 1"), "chosen: 1");
    }
}
