//! Reading a judge's verdict: `{"chosen": x, "rejected": y}` then an explanation.
//!
//! Accepts JSON and Python-literal dicts (`{'chosen': 2, 'rejected': 1}`), ids written as
//! `2`, `"2"`, `"#2"`, `"Response 2"`, and, without a dict, `chosen: 2 … rejected: 1` in
//! prose. Ids are 1-based positions in the order the judge was shown; out-of-range ids are
//! invalid. The same id for both is a tie, reported as such.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 1-based shown positions.
    Pick {
        chosen: usize,
        rejected: usize,
    },
    Tie(usize),
}

/// Parse `text` for a verdict over `n` shown responses; returns it with the explanation.
pub fn parse_verdict(text: &str, n: usize) -> Result<(Verdict, String), String> {
    // A dict that does not parse (cut off by max_tokens, say) falls back to the prose reading.
    let dict = find_dict(text).and_then(|(start, end)| {
        let dict = &text[start..end];
        serde_json::from_str::<Value>(dict)
            .or_else(|_| serde_json::from_str::<Value>(&python_to_json(dict)))
            .ok()
            .map(|value| (value, end))
    });
    let (chosen, rejected, explanation) = match dict {
        Some((value, end)) => {
            let get = |key: &str| -> Result<usize, String> {
                let v = value
                    .as_object()
                    .and_then(|o| {
                        o.iter()
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
                            .map(|(_, v)| v)
                    })
                    .ok_or_else(|| format!("the verdict has no \"{key}\""))?;
                id_of(v).ok_or_else(|| format!("\"{key}\": {v} is not a response id"))
            };
            // A structured answer carries its explanation inside the dict.
            let inner = ["why", "explanation", "analysis"]
                .iter()
                .find_map(|k| value.get(*k))
                .and_then(Value::as_str)
                .map(str::to_string);
            let after = text[end..].trim().to_string();
            (
                get("chosen")?,
                get("rejected")?,
                inner.filter(|e| !e.trim().is_empty()).unwrap_or(after),
            )
        }
        None => {
            let chosen = id_after(text, "chosen")
                .ok_or("no {\"chosen\": x, \"rejected\": y} verdict found")?;
            let rejected = id_after(text, "rejected").ok_or("no \"rejected\" id found")?;
            (chosen, rejected, text.trim().to_string())
        }
    };
    for (name, id) in [("chosen", chosen), ("rejected", rejected)] {
        if id == 0 || id > n {
            return Err(format!("{name} id {id} is out of range 1..{n}"));
        }
    }
    let verdict = if chosen == rejected {
        Verdict::Tie(chosen)
    } else {
        Verdict::Pick { chosen, rejected }
    };
    Ok((verdict, explanation))
}

/// The first balanced `{…}` in the text; braces inside quoted strings do not count.
fn find_dict(text: &str) -> Option<(usize, usize)> {
    let start = text.find('{')?;
    let mut depth = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text[start..].char_indices() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((start, start + i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

/// Enough of Python's literal syntax for a flat dict of strings and numbers.
fn python_to_json(dict: &str) -> String {
    dict.replace('\'', "\"")
        .replace("None", "null")
        .replace("True", "true")
        .replace("False", "false")
}

fn id_of(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| x as usize).or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as usize)
        }),
        Value::String(s) => id_in_text(s),
        _ => None,
    }
}

/// `2`, `#2`, `Response 2`, `response #2`, `(2)`.
fn id_in_text(s: &str) -> Option<usize> {
    let lower = s.trim().to_ascii_lowercase();
    let rest = lower.strip_prefix("response").unwrap_or(&lower);
    let rest = rest
        .trim()
        .trim_start_matches('#')
        .trim_matches(|c| c == '(' || c == ')')
        .trim();
    rest.parse().ok()
}

/// The first number after `key` in prose (`chosen: 2`, `Chosen = #3`).
fn id_after(text: &str, key: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find(key)? + key.len();
    let digits: String = lower[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever a judge answers, parsing gives a verdict or a reason, never a panic, and
        /// a pick names candidates that exist.
        #[test]
        fn any_answer_parses_or_fails_cleanly(text in "\\PC{0,200}", n in 0usize..6) {
            if let Ok((Verdict::Pick { chosen, rejected }, _)) = parse_verdict(&text, n) {
                proptest::prop_assert!(chosen >= 1 && chosen <= n && rejected >= 1 && rejected <= n);
            }
        }

        #[test]
        fn dict_like_answers_parse_or_fail_cleanly(
            a in proptest::num::i64::ANY, b in "\\PC{0,12}", tail in "\\PC{0,40}", n in 0usize..6,
        ) {
            let text = format!("{{'chosen': {a}, 'rejected': '{b}'}} {tail}");
            let _ = parse_verdict(&text, n);
        }
    }

    #[test]
    fn every_accepted_form() {
        let pick = Verdict::Pick {
            chosen: 2,
            rejected: 1,
        };
        for text in [
            r#"{"chosen": 2, "rejected": 1} Because."#,
            r#"{'chosen': 2, 'rejected': 1}"#,
            r##"{"chosen": "#2", "rejected": "#1"}"##,
            r#"{"chosen": "Response 2", "rejected": "response 1"}"#,
            r#"Here you go: { "Chosen" : 2.0, "rejected": "1" } and why"#,
            "chosen: 2, rejected: 1",
            // A brace inside a string, and an answer cut off by max_tokens.
            r#"{"chosen": 2, "rejected": 1, "why": "} is not the end"}"#,
            r#"{"chosen": 2, "rejected": 1, "why": "} and then it ran out of tok"#,
        ] {
            assert_eq!(
                parse_verdict(text, 4).map(|v| v.0),
                Ok(pick.clone()),
                "{text}"
            );
        }
        let (_, why) =
            parse_verdict(r#"{"chosen": 2, "rejected": 1} Because it is kinder."#, 2).unwrap();
        assert_eq!(why, "Because it is kinder.");
    }

    #[test]
    fn ties_out_of_range_and_garbage() {
        assert_eq!(
            parse_verdict(r#"{"chosen": 3, "rejected": 3}"#, 4)
                .unwrap()
                .0,
            Verdict::Tie(3)
        );
        assert!(
            parse_verdict(r#"{"chosen": 5, "rejected": 1}"#, 4)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse_verdict(r#"{"chosen": 0, "rejected": 1}"#, 4).is_err());
        assert!(parse_verdict("I like them all.", 4).is_err());
        assert!(
            parse_verdict(r#"{"best": 1}"#, 4)
                .unwrap_err()
                .contains("chosen")
        );
        assert!(parse_verdict(r#"{"chosen": "the first", "rejected": 2}"#, 4).is_err());
    }
}
