//! The root package's integration tests, one binary (one link of Ballista, delta-rs and
//! llama.cpp): the `caiflow` command and the library crates together, against mock
//! endpoints, moto's S3 and local clusters. One module per area.

#[path = "../common/mod.rs"]
mod common;

mod anthropic;
mod architecture;
mod batch;
mod cli_plan;
mod cluster;
mod delta;
mod delta_s3;
mod durable;
mod faults;
mod generate;
mod new_user;
mod paper;
mod prompts_cli;
mod report;
mod spend;
mod view;
