#!/usr/bin/env bash
# Zero to an SL-CAI dataset: installs what is missing, builds caiflow, starts llama.cpp's
# server with SmolLM2 on 127.0.0.1, runs plans/sl_cai.sql on the sample prompts, exports
# for NeMo-Aligner and TRL, and prints where everything is.
#   LIMIT=50 bash scripts/demo.sh      # how many sample prompts (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== building caiflow (the first build takes ~10 minutes)" >&2
cargo build --quiet --bin caiflow
caiflow="$CARGO_TARGET_DIR/debug/caiflow"

port=$("$CAIFLOW_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="$CAIFLOW_CACHE/llama-demo.log"
"$CAIFLOW_PYTHON" tests/support/llama_server.py "$CAIFLOW_MODEL" "$port" 8 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "llama server failed to start; see $log" >&2; exit 1; }
  sleep 0.5
done

config="$CAIFLOW_CACHE/demo-caiflow.toml"
cat >"$config" <<TOML
[endpoints.policy]
base_url = "http://127.0.0.1:$port/v1"
model = "smollm2"
max_concurrency = 8
TOML

run_name="demo-$(date +%Y%m%d-%H%M%S)"
"$caiflow" run plans/sl_cai.sql --config "$config" --run "$run_name" --set "limit=${LIMIT:-20}" --set max_tokens=96
run="data/runs/$run_name"
"$caiflow" export "$run" --format nemo-sft >/dev/null
"$caiflow" export "$run" --format trl-sft >/dev/null
echo
echo "== a few SL-CAI rows (prompt -> revision)"
"$caiflow" sql --run "$run" -e "SELECT principle_id, substr(prompt, 1, 50) AS prompt, substr(revision, 1, 70) AS revision FROM revisions LIMIT 5"
echo
echo "Results:"
echo "  run folder:        $run  (revisions/ and sft/split=*/ as Parquet)"
echo "  NeMo-Aligner SFT:  $run/export/nemo-sft/*.jsonl"
echo "  TRL SFT:           $run/export/trl-sft/*.jsonl"
echo "  query it:          $caiflow sql --run $run -e 'SELECT * FROM revisions LIMIT 3'"
