#!/usr/bin/env bash
# Side-by-side benchmark: our fine-tuning step vs a PyTorch + Hugging Face loop
# (benchmarks/bench_vs_pytorch.py; about 3.5 minutes on 2 quiet CPU cores, up to
# about 10 while other processes keep them busy).
#   - ours runs in ./.venv (bash scripts/install.sh, run first; idempotent);
#   - the peer runs in ./.bench-venv: torch 2.13.0 (CPU) + transformers, created
#     here idempotently and never a dependency of the library.
# Extra flags go to the benchmark, e.g. `bash scripts/bench.sh --batch-sizes 32`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON_FOR_VENV:-python3}
PEER=$ROOT/.bench-venv
TORCH_SPEC=${ALB_BENCH_TORCH:-torch==2.13.0}
TRANSFORMERS_SPEC=${ALB_BENCH_TRANSFORMERS:-transformers}

ALB_SKIP_HOROVOD=${ALB_SKIP_HOROVOD:-1} bash scripts/install.sh

if [ ! -x "$PEER/bin/python" ]; then
  echo "[bench] creating $PEER (the peer's own virtual environment)"
  "$PY" -m venv "$PEER"
fi
stamp=$PEER/.alb-bench-stamp
want="$TORCH_SPEC $TRANSFORMERS_SPEC"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bench] pip install $TORCH_SPEC (CPU wheel) $TRANSFORMERS_SPEC into $PEER"
  # pip finds the CPU wheel through its find-links (configured on this project's
  # machines); elsewhere point PIP_EXTRA_INDEX_URL at a CPU wheel index first.
  "$PEER/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$PEER/bin/python" -m pip install -q "$TORCH_SPEC" "$TRANSFORMERS_SPEC" 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$PEER/bin/python" -c "import torch, transformers" \
    || { echo "[bench] the peer's install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
else
  echo "[bench] peer environment up to date"
fi

export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p runs/bench
exec .venv/bin/python benchmarks/bench_vs_pytorch.py \
  --peer-python "$PEER/bin/python" --json-out runs/bench/bench_vs_pytorch.json "$@"
