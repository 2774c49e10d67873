//! CAI stages, each a DataFusion table function.
//!
//! | function | module |
//! |---|---|
//! | `red_team_prompts(path, …)` | [`prompts`] |
//! | `respond(input, …)` | [`respond`] |
//! | `critique(input, …)` | [`critique`] |
//! | `revise(input, …)` | [`revise`] |
//! | `sample(input, …)` | [`sample`] |
//! | `judge(candidates, …)` | [`judge`] |
//! | `helpful_sft(path, …)` | [`helpful`] |
//! | `blend(cai, helpful, …)` | [`blend`] |
//! | `near_dedup(input, …)` | [`near_dedup`] |
//! | `generate(input, template => …, output => …)` | [`generate`] |
//! | `red_team_generate(seed_prompts, n => …)` | [`red_team_generate`] |

pub mod args;
pub mod blend;
pub mod cells;
pub mod critique;
pub mod exec;
pub mod generate;
pub mod helpful;
pub mod input;
pub mod judge;
pub mod lineage;
pub mod llm_call;
pub mod near_dedup;
pub mod prompts;
pub mod red_team_generate;
pub mod respond;
pub mod revise;
pub mod row;
pub mod sample;
pub mod source;
pub mod spread;
pub mod transcript;
pub mod verdict;
