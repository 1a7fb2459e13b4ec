"""Running the real processes of a test: workers under ``horovodrun -np 2 --gloo``, and
plain subprocesses, quiet, CPU-only, one thread per op pool (2 ranks share 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).parent.parent
TIMEOUT_S = 600  # a guard against hangs; two pytest workers share the cores


def quiet_env() -> dict[str, str]:
    """Quiet, CPU-only, one thread per op pool: 2 ranks share 2 cores."""
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    for key in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"):  # never "auto" into horovod by accident
        env.pop(key, None)
    return env


def deterministic_env() -> dict[str, str]:
    """``quiet_env`` with op determinism (the README's advice for bit-exact reruns) and
    TensorFlow's own (Eigen) kernels instead of oneDNN's: with one thread per pool every
    reduction is summed in one fixed order, so two runs that should agree bit for bit do,
    also on a loaded host (oneDNN may split a reduction differently from one call to the
    next)."""
    return {**quiet_env(), "TF_ENABLE_ONEDNN_OPTS": "0", "TF_DETERMINISTIC_OPS": "1"}


def run_checked(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            check=False,
            cwd=REPO,
            env=env or quiet_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"timed out after {TIMEOUT_S} s: {cmd}\n{err.stdout}\n{err.stderr}")
    if proc.returncode != 0:
        pytest.fail(
            f"exit {proc.returncode}: {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def horovodrun_2(
    horovodrun: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``horovodrun -np 2 --gloo python *args`` (the ranks inherit ``env``)."""
    return run_checked(
        [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, *args], env
    )


#: XLA:CPU with LLVM's optimisations off (the programs compile in about a third of the
#: time; floating-point semantics unchanged: XLA:CPU does no fast-math either way).
QUICK_XLA = "--xla_backend_optimization_level=0"


def arrays_on_backend(backend: str, worker: str, out: Path, *flags: str) -> dict:
    """Run ``tests/workers/<worker> OUT [flags]`` under ``KERAS_BACKEND=backend`` (one
    backend per process) and return the arrays it saved to ``out`` (an ``.npz``)."""
    import numpy as np

    env = quiet_env()
    env["KERAS_BACKEND"] = backend
    if backend == "jax":  # LLVM's optimisations off: a third of XLA:CPU's compile time
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {QUICK_XLA}".strip()
    run_checked([sys.executable, str(WORKERS / worker), str(out), *flags], env)
    with np.load(out) as data:
        return {key: data[key] for key in data.files}
