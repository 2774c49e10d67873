//! One module per command: each reads its arguments, calls the library crates and says
//! what happened; none exits the process, each returns how it ended ([`Exit`]).

pub mod cluster;
pub mod export;
pub mod inspect;
pub mod model;
pub mod repair;
pub mod report;
pub mod run;
pub mod sql;
pub mod vacuum;
pub mod view;

use std::process::ExitCode;
use std::time::Duration;

/// How a command ended: the process's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done (0).
    Success,
    /// Failed; the error was said (1).
    Failed,
    /// A budget stopped the run (`--max-tokens`, `--max-cost`, `--max-requests` or an
    /// endpoint's `budget`) (3).
    BudgetStopped,
    /// Ctrl-C or SIGTERM stopped it (130).
    Interrupted,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(match exit {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::BudgetStopped => 3,
            Exit::Interrupted => 130,
        })
    }
}

/// How long requests in flight may finish after the first Ctrl-C.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
