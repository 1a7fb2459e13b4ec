#!/usr/bin/env bash
# Build Horovod 0.28.1 (the last release) against the TensorFlow installed in $PYTHON.
#
# Horovod is the data-parallel backend of adv_large_batch.engine.distributed (the large-batch
# experiments average per-worker gradients with hvd.grouped_allreduce). No wheel of Horovod
# exists for TF 2.21, and the 0.28.1 sdist does not compile against it unpatched:
# horovod/tensorflow/xla_mpi_ops.cc includes XLA headers that TF no longer ships. We drop that
# file from the CMake source list (horovod/tensorflow/CMakeLists.txt). That removes only the
# optional XLA custom-call ops (HOROVOD_ENABLE_XLA_OPS), for CPU and GPU builds alike.
#
# Usage:   PYTHON=/path/to/.venv/bin/python bash horovodrun_scripts/build_horovod.sh
#          (PYTHON defaults to python3 on PATH)
# Result:  Horovod 0.28.1 with TensorFlow + Gloo (no MPI, no PyTorch, no MXNet), checked with
#          `horovodrun --check-build`. Re-running is a no-op (a few seconds) once it is built.
# GPU:     when nvcc and an NCCL library are found, HOROVOD_GPU_OPERATIONS=NCCL is set.
#          The GPU build is UNTESTED here (the CI/dev machines are CPU-only).
# Runner:  horovodrun stops its workers (on its own SIGTERM / Ctrl-C, or when one rank fails)
#          by SIGTERMing the children of each worker's `sh -c`, waiting 5 s, then SIGSTOPping
#          and SIGTERMing the shell.  5 s is short for a checkpoint, and the shell is killed even
#          when its worker ended in time (a stopped shell dies of SIGTERM before it can report
#          the worker's status: 143 instead of, say, 75).  We patch the installed runner
#          (patch_runner below, idempotent): HOROVOD_GRACEFUL_TERMINATION_TIME_S (default 60)
#          seconds of grace, as a scheduler gives; a shell whose workers all ended within it is
#          left to end by itself with their status; a worker that is the shell itself (`sh -c`
#          exec'd it) gets SIGTERM first.  Anything still running after the grace period is
#          stopped as before.
set -euo pipefail

HOROVOD_VERSION="0.28.1"
PYTHON="${PYTHON:-python3}"

log() { echo "[build_horovod] $*" >&2; }
die() {
    echo "[build_horovod] ERROR: $*" >&2
    exit 1
}

PYTHON_BIN="$(command -v "${PYTHON}" || true)"
[[ -n "${PYTHON_BIN}" ]] || die "Python interpreter '${PYTHON}' not found (set PYTHON=...)."
log "Python: ${PYTHON_BIN} ($("${PYTHON_BIN}" -c 'import sys; print(sys.version.split()[0])'))"

# horovodrun is installed next to the interpreter (the venv's bin/); fall back to the scheme's
# scripts directory for interpreters that are not in a venv.
SCRIPTS_DIR="$(dirname "${PYTHON_BIN}")"
HOROVODRUN="${SCRIPTS_DIR}/horovodrun"

check_build() {
    if [[ ! -x "${HOROVODRUN}" ]]; then
        HOROVODRUN="$("${PYTHON_BIN}" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/horovodrun"
    fi
    [[ -x "${HOROVODRUN}" ]] || die "horovodrun not found next to ${PYTHON_BIN}."
    log "${HOROVODRUN} --check-build"
    TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" "${HOROVODRUN}" --check-build
}

# Exit status 0 when Horovod ${HOROVOD_VERSION} with TensorFlow ops and Gloo is importable.
already_built() {
    TF_CPP_MIN_LOG_LEVEL=3 "${PYTHON_BIN}" - "${HOROVOD_VERSION}" >/dev/null 2>&1 <<'EOF'
import sys
import horovod
import horovod.tensorflow as hvd
ok = horovod.__version__ == sys.argv[1] and hvd.gloo_built()
sys.exit(0 if ok else 1)
EOF
}

# The runner patch (see the header): idempotent, on the installed copy.
patch_runner() {
    "${PYTHON_BIN}" - <<'EOF'
import pathlib

import horovod.runner.common.util.safe_shell_exec as m

path = pathlib.Path(m.__file__)
text = original = path.read_text()
GRACE_OLD = "GRACEFUL_TERMINATION_TIME_S = 5\n"
GRACE_NEW = (
    "GRACEFUL_TERMINATION_TIME_S = int(os.environ.get("
    "'HOROVOD_GRACEFUL_TERMINATION_TIME_S', '60'))\n"
)
# Waits for a process to end WITHOUT reaping it: the shell is the middleman's child, whose
# main thread reaps it in Popen.wait(); psutil's wait() would take the status first and
# Popen would then report 0 for a rank that exited 75.
HELPER = (
    "def _ended_within(p, seconds):\n"
    "    # adv-large-batch: has p ended (a zombie or gone) within seconds? Never reaps it.\n"
    "    deadline = time.time() + seconds\n"
    "    while True:\n"
    "        try:\n"
    "            if p.status() == psutil.STATUS_ZOMBIE:\n"
    "                return True\n"
    "        except psutil.NoSuchProcess:\n"
    "            return True\n"
    "        if time.time() >= deadline:\n"
    "            return False\n"
    "        time.sleep(0.05)\n"
    "\n\n"
)
EXECD = (
    "    # adv-large-batch: no children: `sh -c` exec'd the worker (SIGTERM it, grace period),\n"
    "    # or the shell is ending with its worker's status (let it, a second at most).\n"
    "    try:\n"
    "        if not p.children():\n"
    "            if _ended_within(p, 1.0):\n"
    "                return\n"
    "            p.terminate()\n"
    "            if _ended_within(p, GRACEFUL_TERMINATION_TIME_S):\n"
    "                return\n"
    "    except psutil.NoSuchProcess:\n"
    "        return\n"
)
SHELL = (
    "    # adv-large-batch: every child ended in time: the shell ends by itself, with their status.\n"
    "    if not alive and _ended_within(p, GRACEFUL_TERMINATION_TIME_S):\n"
    "        return\n"
)
# What earlier versions of this patch inserted (they reaped with p.wait): taken out first.
EARLIER = (
    "    # adv-large-batch: SIGTERM the exec'd worker first: no children means `sh -c` exec'd it,"
    " so it gets the grace period.\n    try:\n        if not p.children():\n"
    "            p.terminate()\n            p.wait(timeout=GRACEFUL_TERMINATION_TIME_S)\n"
    "            return\n    except psutil.NoSuchProcess:\n        return\n"
    "    except psutil.TimeoutExpired:\n        pass\n",
    "    # adv-large-batch: every child ended in time: the shell ends by itself, with their status.\n"
    "    if not alive:\n        try:\n            p.wait(timeout=GRACEFUL_TERMINATION_TIME_S)\n"
    "            return\n        except psutil.NoSuchProcess:\n            return\n"
    "        except psutil.TimeoutExpired:\n            pass\n",
)
ANCHORS = {
    HELPER: ("def terminate_executor_shell_and_children(pid):\n", "before"),
    EXECD: ("    # Terminate children gracefully.\n", "before"),
    SHELL: (
        "    gone, alive = psutil.wait_procs(p.children(), timeout=GRACEFUL_TERMINATION_TIME_S)\n",
        "after",
    ),
}
for earlier in EARLIER:
    text = text.replace(earlier, "")
text = text.replace(GRACE_OLD, GRACE_NEW)
for block, (anchor, where) in ANCHORS.items():
    if block not in text:
        assert text.count(anchor) == 1, f"safe_shell_exec changed: {anchor.strip()}"
        text = text.replace(anchor, block + anchor if where == "before" else anchor + block)
for needed in (GRACE_NEW, "\nimport os\n", "\nimport time\n", "\nimport psutil\n"):
    assert needed in text, f"safe_shell_exec changed: {needed.strip()}"
if text != original:
    path.write_text(text)
    print(f"[build_horovod] patched {path}: a grace period, and each rank's own exit status")
EOF
}

if already_built; then
    log "Horovod ${HOROVOD_VERSION} with TensorFlow + Gloo is already installed; nothing to build."
    patch_runner
    check_build
    exit 0
fi

TF_VERSION="$(TF_CPP_MIN_LOG_LEVEL=3 "${PYTHON_BIN}" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)" ||
    die "TensorFlow is not importable from ${PYTHON_BIN}; install the project first (pip install -e .)."
log "TensorFlow: ${TF_VERSION}"

# --no-build-isolation builds with the packages of $PYTHON, so the build tools must be there.
"${PYTHON_BIN}" -m pip install --quiet "setuptools" "wheel" "packaging"
if command -v cmake >/dev/null 2>&1; then
    log "CMake: $(command -v cmake) ($(cmake --version | head -n1))"
else
    log "No system cmake; installing the cmake wheel into ${PYTHON_BIN}."
    "${PYTHON_BIN}" -m pip install --quiet cmake
    export PATH="${SCRIPTS_DIR}:${PATH}"
    command -v cmake >/dev/null 2>&1 || die "cmake still not found after 'pip install cmake'."
fi

# GPU collectives: only with a CUDA compiler AND an NCCL library (HOROVOD_NCCL_HOME, the
# dynamic-linker cache or the CUDA toolkit). An explicit HOROVOD_GPU_OPERATIONS is respected.
# UNTESTED here: the machines this script was developed on have nvcc but no NCCL/GPU.
have_nccl() {
    [[ -n "${HOROVOD_NCCL_HOME:-}" ]] && return 0
    ldconfig -p 2>/dev/null | grep -q 'libnccl' && return 0
    compgen -G "/usr/local/cuda*/lib64/libnccl*" >/dev/null && return 0
    return 1
}
if [[ -z "${HOROVOD_GPU_OPERATIONS:-}" ]]; then
    if command -v nvcc >/dev/null 2>&1 && have_nccl; then
        export HOROVOD_GPU_OPERATIONS=NCCL
        log "nvcc and NCCL found: building with HOROVOD_GPU_OPERATIONS=NCCL (untested here)."
    else
        log "No nvcc+NCCL pair found: CPU-only build (Gloo collectives)."
    fi
fi

WORK_DIR="$(mktemp -d -t horovod-build-XXXXXX)"
trap 'rm -rf "${WORK_DIR}"' EXIT

log "Downloading the horovod==${HOROVOD_VERSION} sdist into ${WORK_DIR}"
"${PYTHON_BIN}" -m pip download --quiet --no-deps --no-binary :all: \
    "horovod==${HOROVOD_VERSION}" -d "${WORK_DIR}"
tar -xzf "${WORK_DIR}/horovod-${HOROVOD_VERSION}.tar.gz" -C "${WORK_DIR}"
SRC_DIR="${WORK_DIR}/horovod-${HOROVOD_VERSION}"

# The TF 2.21 patch: remove xla_mpi_ops.cc from the TF extension's sources.
TF_CMAKE="${SRC_DIR}/horovod/tensorflow/CMakeLists.txt"
grep -q 'xla_mpi_ops.cc' "${TF_CMAKE}" || die "xla_mpi_ops.cc not found in ${TF_CMAKE}; sdist changed?"
sed -i '/xla_mpi_ops\.cc/d' "${TF_CMAKE}"
if grep -q 'xla_mpi_ops.cc' "${TF_CMAKE}"; then
    die "failed to remove xla_mpi_ops.cc from ${TF_CMAKE}"
fi
log "Patched ${TF_CMAKE#"${WORK_DIR}/"}: xla_mpi_ops.cc dropped from the build."

JOBS="$(nproc 2>/dev/null || echo 2)"
log "Building and installing (about 2.5 minutes on 2 cores) ..."
start=${SECONDS}
HOROVOD_WITH_TENSORFLOW=1 \
    HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 \
    HOROVOD_WITHOUT_MXNET=1 \
    MAKEFLAGS="-j${JOBS}" \
    "${PYTHON_BIN}" -m pip install --no-build-isolation --no-cache-dir "${SRC_DIR}"
log "Build + install took $((SECONDS - start)) s."

already_built || die "Horovod installed but 'import horovod.tensorflow' or gloo_built() failed."
patch_runner
check_build
log "Done: Horovod ${HOROVOD_VERSION} (TensorFlow ${TF_VERSION}, Gloo) in ${PYTHON_BIN}."
