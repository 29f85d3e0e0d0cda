#!/usr/bin/env bash
# Create (or reuse) the benchmark venv bench/.venv from bench/requirements.txt.
# Separate from the project's .venv so MindCV 0.3.0 and PyTorch never touch it.
# Usage: bash bench/setup_venv.sh  [BENCH_VENV=/other/path]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${BENCH_VENV:-$here/.venv}"
py="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -r "$here/requirements.txt"
"$venv/bin/python" -c "import mindspore, mindcv, torch, numpy; print('bench venv ok:', mindspore.__version__, mindcv.__version__, torch.__version__, numpy.__version__)"
