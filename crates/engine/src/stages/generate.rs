//! `generate(input, template => '…{column}…', output => 'name', …)`: one request per row for
//! a prompt written in SQL, with everything the CAI stages have (the endpoint's shared
//! budget and depth-first scheduler, the journal, retries, budgets, lineage
//! `{output}_lineage`, errors as data, progress).
//!
//! The template names input columns in braces (`{{` and `}}` are literal braces); unknown
//! names are planning errors listing the input's columns. `messages => 'column'` sends a
//! conversation column (`List<Struct{role, content}>`) as it is instead. `json_schema =>
//! '{…}'` asks for structured output: the answer must parse as JSON, else the row is asked
//! again (`attempts`, default 3, in the same conversation), then recorded as an error row
//! whose `{output}` is the last raw answer.

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::plan_err;
use datafusion::error::Result;

use crate::output_row;
use crate::stage::options::json_response_format;
use crate::stage::{Emit, InputRow, Llm, LlmDefaults, LlmOptions, LlmStage, Missing, StageArgs};
use caiflow_llm::Message;

/// A piece of a template: literal text or an input column's value.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Column(String),
}

/// Split `template` into pieces; `{{` and `}}` are literal braces.
fn parse_template(template: &str) -> Result<Vec<Piece>> {
    let mut pieces = vec![];
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return plan_err!(
                                "generate: template has an unclosed '{{' (write '{{{{' for a literal brace)"
                            );
                        }
                    }
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Column(name.trim().to_string()));
            }
            '}' => {
                return plan_err!(
                    "generate: template has a '}}' without '{{' (write '}}}}' for a literal brace)"
                );
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[derive(Debug)]
pub struct Generate {
    options: LlmOptions,
    /// The prompt, when the input's columns are filled into a template.
    template: Vec<Piece>,
    /// The conversation column sent as it is (instead of a template).
    messages: Option<String>,
    output: String,
    /// `response_format` of structured output, when a JSON schema was given.
    response_format: Option<serde_json::Value>,
    attempts: u32,
}

output_row! {
    /// The answer (its column is named by the `output` option).
    pub struct Generated { generated: Option<String> }
}

impl Generate {
    fn new(args: &StageArgs, input: &Schema) -> Result<Self> {
        let defaults = LlmDefaults {
            few_shot: Some("none"),
            ..Default::default()
        };
        let options = LlmOptions::parse_with(args, &defaults)?;
        let output = args.str_or("output", "generated");
        if output.trim().is_empty() || output == "error" || input.index_of(&output).is_ok() {
            return plan_err!(
                "generate: output => '{output}' must name a new column (not 'error' nor an input column)"
            );
        }
        let columns: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
        let known = |name: &str| -> Result<()> {
            if columns.contains(&name) {
                Ok(())
            } else {
                plan_err!(
                    "generate: the input has no column '{name}' (it has: {})",
                    columns.join(", ")
                )
            }
        };
        let (template, messages) = match (args.str("template"), args.str("messages")) {
            (Some(t), None) => {
                let pieces = parse_template(t)?;
                for p in &pieces {
                    if let Piece::Column(name) = p {
                        known(name)?;
                    }
                }
                (pieces, None)
            }
            (None, Some(column)) => {
                known(column)?;
                (vec![], Some(column.to_string()))
            }
            _ => {
                return plan_err!(
                    "generate: give template => '…{{column}}…' or messages => 'column' (one of them)"
                );
            }
        };
        let response_format = args
            .str("json_schema")
            .map(|s| json_response_format("generate", &output, s))
            .transpose()?;
        let attempts = args.parsed_or("attempts", 3u32)?;
        args.check("attempts", attempts, attempts >= 1, ">= 1")?;
        Ok(Generate {
            options,
            template,
            messages,
            output,
            response_format,
            attempts,
        })
    }

    /// The row's turns: the template filled in, or its conversation column.
    fn turns(&self, row: &InputRow) -> Result<Vec<Message>, String> {
        if let Some(column) = &self.messages {
            return match row.messages(column) {
                Some(turns) if !turns.is_empty() => Ok(turns),
                _ => Err(format!("input column '{column}' is null or empty")),
            };
        }
        let mut prompt = String::new();
        for piece in &self.template {
            match piece {
                Piece::Text(t) => prompt.push_str(t),
                Piece::Column(c) => match row.str(c) {
                    Some(v) => prompt.push_str(v),
                    None => return Err(format!("input column '{c}' is null")),
                },
            }
        }
        Ok(vec![Message::user(prompt)])
    }
}

#[async_trait]
impl LlmStage for Generate {
    const NAME: &'static str = "generate";
    type Row = Generated;

    fn build(args: &StageArgs, input: &Schema) -> Result<Self> {
        Generate::new(args, input)
    }
    fn options(&self) -> &LlmOptions {
        &self.options
    }
    fn output(&self) -> &str {
        &self.output
    }
    fn required_columns(&self) -> Vec<&'static str> {
        // The template's columns are checked when the stage is built.
        vec![]
    }
    fn fields(&self) -> Vec<Field> {
        vec![Field::new(self.output.as_str(), DataType::Utf8, true)]
    }
    fn lineage_prefix(&self) -> &str {
        &self.output
    }

    async fn process(
        &self,
        row: &InputRow,
        llm: &Llm<'_>,
    ) -> Result<Vec<Emit<Generated>>, Missing> {
        let failed = |error: String, generated: Option<String>, lineage| {
            Ok(vec![Emit::failed(Generated { generated }, lineage, error)])
        };
        if row.str("error").is_some() {
            return Err(Missing("error"));
        }
        let mut turns = match self.turns(row) {
            Ok(t) => t,
            Err(e) => return failed(format!("generate: {e}"), None, None),
        };
        // The row's key for its sampling seed: its prompt id, else what it asks.
        let key: Vec<u8> = match row.str("prompt_id") {
            Some(id) => id.as_bytes().to_vec(),
            None => turns.iter().flat_map(|t| t.content.bytes()).collect(),
        };
        for attempt in 1..=self.attempts {
            let attempt_bytes = attempt.to_le_bytes();
            let mut request = self.options.request(
                turns.clone(),
                &[b"generate", self.output.as_bytes(), &key, &attempt_bytes],
            );
            request.params.response_format = self.response_format.clone();
            let (result, lineage) = llm.complete(&request).await;
            let (raw, reasoning) = match result {
                Ok(c) => (c.text, c.reasoning),
                Err(e) => return failed(format!("generate: {e}"), None, lineage),
            };
            let invalid = match &self.response_format {
                None => None,
                Some(_) => serde_json::from_str::<serde_json::Value>(raw.trim()).err(),
            };
            match invalid {
                None => {
                    let row = Generated {
                        generated: Some(raw),
                    };
                    return Ok(vec![Emit::ok(row, lineage).with_reasoning(reasoning)]);
                }
                Some(e) if attempt == self.attempts => {
                    return failed(
                        format!(
                            "generate: the answer is not valid JSON after {} attempt(s): {e}",
                            self.attempts
                        ),
                        Some(raw),
                        lineage,
                    );
                }
                Some(e) => {
                    turns.push(Message::assistant(&raw));
                    turns.push(Message::user(format!(
                        "That answer is not valid JSON ({e}). Answer again with the JSON only."
                    )));
                }
            }
        }
        // Only with attempts = 0, which `build` refuses.
        failed("generate: no answer".into(), None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_columns_and_escape_braces() {
        assert_eq!(
            parse_template("Is {prompt} harmful? {{json}}").unwrap(),
            vec![
                Piece::Text("Is ".into()),
                Piece::Column("prompt".into()),
                Piece::Text(" harmful? {json}".into()),
            ]
        );
        assert!(parse_template("open {prompt").is_err());
        assert!(parse_template("close }").is_err());
    }
}
