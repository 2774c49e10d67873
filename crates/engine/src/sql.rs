//! SQL surface: named arguments for caiflow's table functions.
//!
//! DataFusion passes table functions positional literals only. [`NamedArgs`] is a relation
//! planner that rewrites, for caiflow's functions only,
//! - `name => value` into the string `'name => value'`,
//! - a bare table name (`respond(prompts)`) into `'prompts'`,
//! - a subquery (`respond((SELECT …))`) into its SQL text,
//! - a nested call (`critique(respond(prompts))`) into `SELECT * FROM respond(prompts)`,
//!
//! so `SELECT * FROM revise(critiques, rounds => 4)` reads the way users expect.

use std::collections::BTreeSet;

use datafusion::error::Result;
use datafusion::logical_expr::planner::{
    RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, TableFactor, Value,
};

use crate::stage::args::NAMED_ARG_SEPARATOR;

#[derive(Debug)]
pub struct NamedArgs {
    functions: BTreeSet<String>,
}

impl NamedArgs {
    pub fn new<'a>(functions: impl IntoIterator<Item = &'a str>) -> Self {
        NamedArgs {
            functions: functions.into_iter().map(str::to_ascii_lowercase).collect(),
        }
    }
}

fn string_arg(s: String) -> FunctionArg {
    FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::value(
        Value::SingleQuotedString(s),
    )))
}

/// The text of a value: a quoted string without its quotes, anything else as written.
fn value_text(e: &SqlExpr) -> String {
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

impl RelationPlanner for NamedArgs {
    fn plan_relation(
        &self,
        relation: TableFactor,
        _context: &mut dyn RelationPlannerContext,
    ) -> Result<RelationPlanning> {
        let TableFactor::Table {
            name,
            alias,
            args: Some(mut args),
            with_hints,
            version,
            with_ordinality,
            partitions,
            json_path,
            sample,
            index_hints,
        } = relation
        else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let function = name.to_string().to_ascii_lowercase();
        if self.functions.contains(&function) {
            args.args = args
                .args
                .into_iter()
                .map(|arg| match arg {
                    FunctionArg::Named {
                        name,
                        arg: FunctionArgExpr::Expr(e),
                        ..
                    } => string_arg(format!(
                        "{} {NAMED_ARG_SEPARATOR} {}",
                        name.value,
                        value_text(&e)
                    )),
                    // Positional identifiers name tables: there are no columns in scope here.
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => match e {
                        SqlExpr::Identifier(_) | SqlExpr::CompoundIdentifier(_) => {
                            string_arg(e.to_string())
                        }
                        SqlExpr::Subquery(q) => string_arg(q.to_string()),
                        // A nested stage call, `critique(respond(prompts))`: plan it as a query.
                        SqlExpr::Function(f)
                            if self
                                .functions
                                .contains(&f.name.to_string().to_ascii_lowercase()) =>
                        {
                            string_arg(format!("SELECT * FROM {f}"))
                        }
                        other => FunctionArg::Unnamed(FunctionArgExpr::Expr(other)),
                    },
                    other => other,
                })
                .collect();
        }
        Ok(RelationPlanning::Original(Box::new(TableFactor::Table {
            name,
            alias,
            args: Some(args),
            with_hints,
            version,
            with_ordinality,
            partitions,
            json_path,
            sample,
            index_hints,
        })))
    }
}
