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

[endpoints.judge]
base_url = "http://127.0.0.1:$port/v1"
model = "smollm2"
max_concurrency = 8
TOML

stamp="$(date +%Y%m%d-%H%M%S)"
echo "== SL-CAI" >&2
"$caiflow" run plans/sl_cai.sql --config "$config" --run "sl-$stamp" --set "limit=${LIMIT:-20}" --set max_tokens=96
sl="data/runs/sl-$stamp"
"$caiflow" export "$sl" --format nemo-sft >/dev/null
"$caiflow" export "$sl" --format trl-sft >/dev/null
echo "== RL-CAI" >&2
"$caiflow" run plans/rl_cai.sql --config "$config" --run "rl-$stamp" --set "limit=${LIMIT:-20}" \
  --set max_tokens=64 --set judge_max_tokens=160 --set structured=true
rl="data/runs/rl-$stamp"
"$caiflow" export "$rl" --format nemo-rm >/dev/null
"$caiflow" export "$rl" --format trl-dpo >/dev/null
echo
echo "== a few SL-CAI rows (prompt -> revision)"
"$caiflow" sql --run "$sl" -e "SELECT principle_id, substr(prompt, 1, 50) AS prompt, substr(revision, 1, 70) AS revision FROM revisions LIMIT 5"
echo "== a few RL-CAI judgements"
"$caiflow" sql --run "$rl" -e "SELECT label, chosen_idx, rejected_idx, substr(prompt, 1, 40) AS prompt, substr(chosen, 1, 50) AS chosen FROM judgements LIMIT 5"
echo
echo "Results:"
echo "  SL-CAI run:        $sl  (tables revisions, sft: Parquet + _manifest.json)"
echo "  NeMo-Aligner SFT:  $sl/export/nemo-sft/*.jsonl     TRL SFT: $sl/export/trl-sft/*.jsonl"
echo "  RL-CAI run:        $rl  (tables judgements, preferences: Parquet + _manifest.json)"
echo "  NeMo-Aligner RM:   $rl/export/nemo-rm/*.jsonl      TRL DPO: $rl/export/trl-dpo/*.{jsonl,parquet}"
echo "  query it:          $caiflow sql --run $sl -e 'SELECT * FROM revisions LIMIT 3'"
