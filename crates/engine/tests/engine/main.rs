//! The engine's integration tests: stages and sources through DataFusion sessions, on
//! the testkit's mock server and the shared fixtures, with no `caiflow` process, run store,
//! Ballista or delta-rs in the binary.

#[path = "../../../../tests/common/session.rs"]
mod common;

mod fixtures_compat;
mod judge_mock;
mod paper_mock;
mod prompts_source;
mod schemas;
mod stages_mock;
