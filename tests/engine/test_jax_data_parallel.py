"""Data parallelism on the JAX backend (``keras.distribution.DataParallel``), for real:
two virtual CPU devices in one process equal to one device on the global batch (two
processes on localhost: ``tests/commands/test_finetune_jax.py``), in the default ScaLA
configuration (LAMB, probs target, uniform random start) with dropout ON; accumulation
invariance (4 + 4 + 2 rows == 10 at once); one gradient reduction per optimizer step (none
inside the micro-batch loop); a saved run that resumes exactly; a NaN step that changes
nothing.  Workers:
``tests/workers/jax_data_parallel.py``, TensorFlow blocked."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest

from tests.processes import WORKERS, quiet_env, run_checked

WORKER = str(WORKERS / "jax_data_parallel.py")


#: LLVM's optimisations cost about a third of a JAX worker's time on CPU (XLA compiles);
#: they leave the HLO as it is (all-reduces included), and every comparison of these tests
#: is between runs under the same flags.
QUICK = "--xla_backend_optimization_level=0"


def jax_env(**extra: str) -> dict[str, str]:
    """A quiet JAX environment: one device unless ``XLA_FLAGS`` says otherwise (with
    ``QUICK`` added)."""
    env = quiet_env()
    env.pop("XLA_FLAGS", None)
    env.update(KERAS_BACKEND="jax", **extra)
    if QUICK not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {QUICK}".strip()
    return env


def load(path) -> dict[str, np.ndarray]:  # noqa: ANN001
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def assert_same_default_run(got: dict, want: dict) -> None:
    keys = [k for k in want if k.startswith("default/")]
    assert keys and sorted(keys) == sorted(k for k in got if k.startswith("default/"))
    for key in keys:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def run_one_device(tmp_path) -> dict[str, np.ndarray]:  # noqa: ANN001
    out = tmp_path / "single.npz"
    run_checked([sys.executable, WORKER, "single", str(out)], jax_env())
    return load(out)


def run_two_devices(tmp_path) -> dict[str, np.ndarray]:  # noqa: ANN001
    out = tmp_path / "devices.npz"
    flags = "--xla_force_host_platform_device_count=2"
    run_checked([sys.executable, WORKER, "devices", str(out)], jax_env(XLA_FLAGS=flags))
    return load(out)


def check_one_device(one: dict) -> None:
    # dropout on: two passes of a micro-batch draw different masks, so r is far above what
    # the perturbation alone gives at eps 1e-5 (below 1e-10 with dropout off)
    assert int(one["devices"]) == 1 and min(one["default/regulariser"]) > 1e-6
    # load_model of a run saved after two steps, then the third: what the uninterrupted
    # run's third step gave (weights and logs; dropout on, so the batch counter and the
    # seed came back too)
    for key in [k for k in one if k.startswith("default/weight/")]:
        resumed = one[key.replace("default/", "resumed/")]
        np.testing.assert_allclose(resumed, one[key], rtol=1e-6, atol=1e-7, err_msg=key)
    assert one["resumed/loss"][0] == pytest.approx(one["default/loss"][2], 1e-6)
    # a NaN in the batch: no weight moved, the optimizer did not count the step, the batch
    # counter did, and the step is logged as non-finite
    np.testing.assert_array_equal(one["nan/weights"], one["uneven/4"])
    assert int(one["nan/iterations"]) == 1 and int(one["nan/batches_seen"]) == 2
    assert float(one["nan/nonfinite_steps"]) == 1.0
    # 10 rows in micro-batches of 4 + 4 + 2, weighted by rows: the whole batch's gradient
    np.testing.assert_allclose(one["uneven/4"], one["uneven/None"], rtol=1e-6)


@pytest.mark.slow  # two JAX processes (~2.5 min on 2 loaded cores); one test, so the
# one-device reference runs once whatever the pytest-xdist worker.  Two processes of a
# job equal to one device: the same default run through the command line,
# ``tests/commands/test_finetune_jax.py`` (the worker's ``process`` mode runs it by hand).
def test_two_devices_equal_one_device(tmp_path):
    one = run_one_device(tmp_path)
    check_one_device(one)
    devices = run_two_devices(tmp_path)
    assert int(devices["devices"]) == 2
    assert_same_default_run(devices, one)
    # one reduction per step: no all-reduce inside the micro-batch loop (the gradients
    # are reduced once after it; outside it the metrics' sums may add a few of their own)
    total, in_loop = devices["all_reduces"]
    assert total >= 1 and in_loop == 0


def test_a_cpu_unrolls_a_few_micro_batches_and_loops_over_many():
    """Unrolled, each micro-batch keeps its own buffers on XLA:CPU: the bundled MiniLM's
    ScaLA step at 1,024 = 32 x 32 rows was killed for memory at 20.8 GB when every step
    unrolled all its micro-batches (before: ``unroll = length`` on a CPU, whatever the
    length).  Up to ``CPU_UNROLL_LIMIT`` they are unrolled (XLA:CPU's slow convolutions in
    loop bodies); above it, and on accelerators, the loop stays a loop."""
    from adv_large_batch.engine.jax_trainer import CPU_UNROLL_LIMIT, unroll_for

    assert CPU_UNROLL_LIMIT == 8
    assert [unroll_for(n, "cpu") for n in (1, 2, 4, 8)] == [1, 2, 4, 8]
    assert [unroll_for(n, "cpu") for n in (9, 32, 256)] == [1, 1, 1]
    assert [unroll_for(n, platform) for n in (2, 32) for platform in ("gpu", "tpu")] == [1] * 4
