#!/usr/bin/env bash
# Run every check and test: formatting, clippy, unit and integration tests (SmolLM2 embedded
# and behind llama.cpp's server, mock endpoints, S3, fixture compatibility). `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_build
setup_test_tools

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo check --no-default-features (no embedded backend, no C++)" >&2
cargo check --workspace --exclude caiflow-embedded --no-default-features --quiet
echo "== cargo test" >&2
# Test binaries run one at a time: the real-model test wants the cores to itself.
cargo test --workspace --all-targets --no-fail-fast -- --test-threads=2
