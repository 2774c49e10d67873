//! End to end on a real model: SmolLM2 behind llama.cpp's own server and embedded in
//! process. Its own binary, so its tests do not share the cores with the others'.

#[path = "../common/mod.rs"]
mod common;

mod e2e_embedded;
mod e2e_llama;
