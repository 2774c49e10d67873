//! Table-function arguments: `stage(input, name => value, …)`.
//!
//! DataFusion hands table functions only positional arguments, so [`crate::sql::NamedArgs`]
//! rewrites `name => value` into the string `'name => value'` before planning. Writing that
//! string by hand works too (useful from engines without named arguments).

use std::collections::BTreeMap;

use datafusion::common::ScalarValue;
use datafusion::common::{plan_datafusion_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;

/// The separator between an option's name and value inside an argument string.
pub const NAMED_ARG_SEPARATOR: &str = "=>";

/// Parsed arguments: the input (first positional argument, if the function takes one) and
/// the options, with a check that every option given was used.
#[derive(Debug)]
pub struct StageArgs {
    function: String,
    pub positional: Vec<String>,
    options: BTreeMap<String, String>,
    used: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

fn literal_text(function: &str, expr: &Expr) -> Result<String> {
    let scalar = match expr {
        Expr::Literal(s, _) => s,
        // `-1` is a negation of the literal 1.
        Expr::Negative(inner) if matches!(inner.as_ref(), Expr::Literal(s, _) if !s.is_null()) => {
            return Ok(format!("-{}", literal_text(function, inner)?));
        }
        other => {
            return plan_err!("{function}: arguments must be literals, got {other}");
        }
    };
    Ok(match scalar {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.clone(),
        ScalarValue::Null => "null".into(),
        other if !other.is_null() => other.to_string(),
        _ => "null".into(),
    })
}

impl StageArgs {
    pub fn parse(function: &str, exprs: &[Expr]) -> Result<Self> {
        let texts = exprs
            .iter()
            .map(|e| literal_text(function, e))
            .collect::<Result<Vec<_>>>()?;
        Self::parse_texts(function, texts)
    }

    /// Parse argument texts as [`StageArgs::texts`] gives them back (a call shipped to
    /// another process is rebuilt from these).
    pub fn parse_texts(function: &str, texts: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut positional = vec![];
        let mut options = BTreeMap::new();
        for text in texts {
            match text.split_once(NAMED_ARG_SEPARATOR) {
                Some((name, value)) if is_option_name(name.trim()) => {
                    let name = name.trim().to_ascii_lowercase();
                    if options
                        .insert(name.clone(), value.trim().to_string())
                        .is_some()
                    {
                        return plan_err!("{function}: option '{name}' given twice");
                    }
                }
                _ if options.is_empty() => positional.push(text),
                _ => {
                    return plan_err!(
                        "{function}: positional argument '{text}' after named options"
                    );
                }
            }
        }
        Ok(StageArgs {
            function: function.to_string(),
            positional,
            options,
            used: Default::default(),
        })
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    /// Every argument as text: the positional ones, then `name => value` for each option.
    pub fn texts(&self) -> Vec<String> {
        let mut texts = self.positional.clone();
        texts.extend(
            self.options
                .iter()
                .map(|(k, v)| format!("{k} {NAMED_ARG_SEPARATOR} {v}")),
        );
        texts
    }

    /// The input argument (a table, view, path or query).
    pub fn input(&self) -> Result<&str> {
        self.positional.first().map(String::as_str).ok_or_else(|| {plan_datafusion_err!("{}: the first argument must name the input (a table, a view, a file path or a query)",
                self.function)
        })
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.used.borrow_mut().insert(name.to_string());
        self.options.get(name).map(String::as_str)
    }

    pub fn str_or(&self, name: &str, default: &str) -> String {
        self.str(name).unwrap_or(default).to_string()
    }

    pub fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.str(name) {
            None => Ok(None),
            Some(v) => v.parse::<T>().map(Some).map_err(|e| {
                plan_datafusion_err!("{}: option {name} => '{v}': {e}", self.function)
            }),
        }
    }

    pub fn parsed_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.parsed(name)?.unwrap_or(default))
    }

    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool> {
        match self.str(name).map(|s| s.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if v == "true" || v == "1" || v == "yes" => Ok(true),
            Some(v) if v == "false" || v == "0" || v == "no" => Ok(false),
            Some(v) => plan_err!("{}: option {name} => '{v}' is not a boolean", self.function),
        }
    }

    /// A numeric option's value must be `ok`: else a planning error naming the option, the
    /// value and the allowed `range`.
    pub fn check(
        &self,
        name: &str,
        value: impl std::fmt::Display,
        ok: bool,
        range: &str,
    ) -> Result<()> {
        if ok {
            Ok(())
        } else {
            plan_err!(
                "{}: option {name} => {value} is out of range (allowed: {range})",
                self.function
            )
        }
    }

    /// Fail on options nobody read: a typo must not silently fall back to a default.
    pub fn finish(&self, known: &[&str]) -> Result<()> {
        let used = self.used.borrow();
        if let Some(unknown) = self.options.keys().find(|k| !used.contains(*k)) {
            let mut names: Vec<&str> = used.iter().map(String::as_str).collect();
            names.extend(known);
            names.sort();
            names.dedup();
            return plan_err!(
                "{}: unknown option '{unknown}' (known: {})",
                self.function,
                names.join(", ")
            );
        }
        Ok(())
    }
}

fn is_option_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::lit;

    #[test]
    fn splits_positional_and_named() {
        let a = StageArgs::parse(
            "f",
            &[lit("prompts"), lit("rounds => 4"), lit("temperature=>0.5")],
        )
        .unwrap();
        assert_eq!(a.input().unwrap(), "prompts");
        assert_eq!(a.parsed::<u32>("rounds").unwrap(), Some(4));
        assert_eq!(a.parsed_or::<f64>("temperature", 1.0).unwrap(), 0.5);
        a.finish(&[]).unwrap();
    }

    #[test]
    fn unknown_and_bad_options_are_errors() {
        let a = StageArgs::parse("f", &[lit("t"), lit("roundz => 4")]).unwrap();
        let _ = a.parsed::<u32>("rounds");
        assert!(a.finish(&[]).unwrap_err().to_string().contains("roundz"));
        let b = StageArgs::parse("f", &[lit("t"), lit("rounds => four")]).unwrap();
        assert!(b.parsed::<u32>("rounds").is_err());
    }

    #[test]
    fn texts_round_trip() {
        let a = StageArgs::parse("f", &[lit("t"), lit("rounds => 4"), lit("x=>a => b")]).unwrap();
        let b = StageArgs::parse_texts("f", a.texts()).unwrap();
        assert_eq!(b.texts(), a.texts());
        assert_eq!(b.str("x"), Some("a => b"));
        assert_eq!(b.parsed::<u32>("rounds").unwrap(), Some(4));
    }

    #[test]
    fn a_query_with_arrow_like_text_stays_positional() {
        let a = StageArgs::parse("f", &[lit("SELECT 'a => b' AS x")]).unwrap();
        assert_eq!(a.positional.len(), 1);
    }
}
