"""ConAdv under data parallelism on the JAX backend (``keras.distribution.DataParallel``),
for real: two virtual CPU devices in one process and two processes on localhost (JAX's
CPU collectives) each train exactly what one device trains on the global batch.

For DisAdv, ConAdv separate (tau = 2) and ConAdv shared, three steps of a dropout-free
CIFAR ResNet-8 with split BN (LARS, label smoothing, micro-batches of 4, the random start
fixed), global batches of 16: 8 rows per device (``batch_size=8``, the trainer's batch is
per device) against 16 on one device; the two processes run the two buffered schedules
only (DisAdv's step is the separate schedule's first tau steps).  Asserted:

* every trainable weight after the last step (rtol 1e-5, atol 1e-6), the logs of every
  step, and the adversarial buffer after every step, gathered to the global array: the
  same rows in the same order (the rows are all different, so a permutation would show);
* the buffer is really sharded: axis 1 (rows) is split over the two devices, each holding
  its 8 rows (in the devices run both shards, in each process its own shard), which are
  those rows of the gathered buffer (so of the one-device buffer);
* one gradient reduction per optimizer step, in the train step Keras compiled (devices
  run): every gradient and every BN moving statistic is all-reduced at most once (XLA may
  fold operands it proves equal), none inside a loop (not per micro-batch).  XLA combines
  the trainer's ``pmean`` of the 47 gradients, its mean of the 36 moving statistics (9
  split-BN layers x main/aux x mean/variance) and the metrics' 8-9 scalar sums over the
  sharded per-micro-batch logs into ONE all-reduce; a second, ``pred[]``, is the "every
  loss finite" check.

Not compared: the BN moving statistics.  Each device updates them from its own rows and
the step ends with their mean over the devices, which is not what one device carrying
them through all four micro-batches gets; they play no part in a training step (BN in
training mode normalises by the micro-batch's statistics), so weights, logs and buffer
are still exact.  Worker: ``tests/workers/conadv_data_parallel.py``, TensorFlow blocked.
"""

from __future__ import annotations

import collections
import subprocess
import sys

import numpy as np
import pytest

from tests.adversarial_examples import examples_agree
from tests.engine.test_jax_data_parallel import free_port, jax_env, load
from tests.processes import TIMEOUT_S, WORKERS

WORKER = str(WORKERS / "conadv_data_parallel.py")
SCHEDULES = ("disadv", "separate-tau2", "shared")
BUFFERED = ("separate-tau2", "shared")
HALVES = [[0, 8], [8, 16]]  # the rows (axis 1 of the buffer) of device 0 and device 1
#: LLVM's optimisations cost a third of the workers' time (XLA compiles); they leave the
#: HLO (all-reduces included) as it is and play no part in what is compared.
QUICK = "--xla_backend_optimization_level=0"


def run_all(tmp_path) -> dict[str, dict[str, np.ndarray]]:  # noqa: ANN001
    """The four workers at once (one device, two devices, two processes of one job)."""
    port = free_port()
    job = {
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
    }
    two = f"--xla_force_host_platform_device_count=2 {QUICK}"
    envs = {
        "single": ("single", jax_env(XLA_FLAGS=QUICK)),
        "devices": ("devices", jax_env(XLA_FLAGS=two)),
        "rank0": ("process", jax_env(**job, XLA_FLAGS=QUICK, KERAS_DISTRIBUTION_PROCESS_ID="0")),
        "rank1": ("process", jax_env(**job, XLA_FLAGS=QUICK, KERAS_DISTRIBUTION_PROCESS_ID="1")),
    }
    procs = {}
    for name, (mode, env) in envs.items():
        out = tmp_path / ("processes.npz" if mode == "process" else f"{name}.npz")
        procs[name] = subprocess.Popen(
            [sys.executable, WORKER, mode, str(out)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        outputs = {name: p.communicate(timeout=TIMEOUT_S)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{outputs[name][-3000:]}"
    return {
        "single": load(tmp_path / "single.npz"),
        "devices": load(tmp_path / "devices.npz"),
        "rank0": load(tmp_path / "processes.rank0.npz"),
        "rank1": load(tmp_path / "processes.rank1.npz"),
    }


def compared(got: dict, want: dict, schedules: tuple[str, ...]) -> list[str]:
    """The trained keys (weights, logs, buffers) of ``schedules`` in ``want`` that ``got``
    lacks or that differ: labels exactly, floats to rtol 1e-5 / atol 1e-6."""
    keys = [k for k in want if k.startswith(schedules) and "/layout/" not in k]
    apart = [k for k in keys if k not in got]
    for key in sorted(set(keys) - set(apart)):
        value, expected = got[key], want[key]
        if expected.dtype.kind in "iu":
            same = np.array_equal(value, expected)
        elif "/buffer/images" in key:  # 8 px steps; a zero gradient's sign may differ
            same = examples_agree(value, expected, 8 / 255)
        else:
            same = value.shape == expected.shape and np.allclose(
                value, expected, rtol=1e-5, atol=1e-6
            )
        if not same:
            worst = np.max(np.abs(value.astype(float) - expected.astype(float)))
            apart.append(f"{key}: max |difference| {worst:.3g}")
    return apart


def check_trained(one: dict) -> None:
    """Not vacuous: every schedule has weights and logs, the attacks moved the images,
    and the one-device buffer holds distinct rows (so equal arrays are in one order)."""
    for name in SCHEDULES:
        assert sum(k.startswith(f"{name}/weight/") for k in one) > 40
        for step in range(3):
            assert float(one[f"{name}/{step}/log/perturbation_linf_px"]) == pytest.approx(8)
    for name in BUFFERED:
        images = one[f"{name}/2/buffer/images"]  # every slot written by now
        assert images.shape[1] == 16 and 0.0 <= images.min() < images.max() <= 1.0
        for slot in images:
            assert len({row.tobytes() for row in slot}) == 16, name
    stale = [float(one[f"separate-tau2/{s}/log/stale_fraction"]) for s in range(3)]
    assert stale == [0.0, 0.0, 1.0]


def check_layout(run: dict, local: list[list[int]]) -> None:
    """The buffer's rows are split over the two devices (``HALVES``); this process holds
    ``local`` of them: those rows of the gathered buffer (which ``compared`` checks)."""
    for name in BUFFERED:
        spec = str(run[f"{name}/layout/spec"])
        assert run[f"{name}/layout/rows"].tolist() == HALVES, (name, spec)
        assert run[f"{name}/layout/local_rows"].tolist() == local, (name, spec)
        values = run[f"{name}/layout/local_values"]
        assert values.shape[0] == len(local) and values.shape[2] == 8, values.shape
        for shard, (start, stop) in zip(values, local):
            want = run[f"{name}/2/buffer/images"][:, start:stop]
            np.testing.assert_array_equal(shard, want, err_msg=name)


def check_all_reduces(devices: dict) -> list[int]:
    """One reduction of each gradient and BN statistic per step, none in a loop; returns
    the number of all-reduce ops of each schedule's compiled step."""
    counts = []
    for name in SCHEDULES:
        ops = [str(op).split(";") for op in devices[f"{name}/hlo/all_reduces"]]
        gradients = list(devices[f"{name}/hlo/gradients"])
        moving = list(devices[f"{name}/hlo/moving"])
        assert (len(gradients), len(moving)) == (47, 36), name
        assert int(devices[f"{name}/hlo/in_loops"]) == 0, (name, ops)
        shaped = [s for op in ops for s in op if not s.endswith("[]")]
        # Nothing else is reduced, and nothing twice; XLA may fold operands it proves equal
        # (the micro-batch loop is unrolled on a CPU), so at most the 83, at least 47.
        assert collections.Counter(shaped) <= collections.Counter(gradients + moving), name
        assert len(shaped) >= len(gradients), name
        carrying = [op for op in ops if any(not s.endswith("[]") for s in op)]
        assert len(carrying) == 1, f"{name}: the gradients in {len(carrying)} all-reduces"
        counts.append(len(ops))
    return counts


@pytest.mark.slow  # four JAX processes at once, ~140 s of CPU (~3 min of wall time beside
# jobs holding half the 2 cores); one test, so the one-device reference runs once
def test_conadv_two_devices_and_two_processes_equal_one_device(tmp_path):
    runs = run_all(tmp_path)
    one, devices = runs["single"], runs["devices"]
    assert int(one["devices"]) == 1 and int(devices["devices"]) == 2
    check_trained(one)
    apart = {
        name: compared(run, one, SCHEDULES if name == "devices" else BUFFERED)
        for name, run in runs.items()
        if name != "single"
    }
    hint = (
        "only 'shared' apart, from step 0's adversarial loss on: its FGSM examples of batch "
        "0 take the main BN's statistics over the whole per-device batch (8 rows here, 16 on "
        "one device), not per micro-batch (ConAdv.fgsm)"
    )
    lines = [f"{name}: {key}" for name, keys in apart.items() for key in keys]
    if lines and all(": shared/" in line for line in lines):
        lines.insert(0, hint)
    assert not lines, "\n".join(lines)
    check_layout(devices, HALVES)
    for rank in (0, 1):
        run = runs[f"rank{rank}"]
        assert (int(run["processes"]), int(run["devices"])) == (2, 2)
        check_layout(run, [HALVES[rank]])
    assert check_all_reduces(devices) == [2, 2, 2]
