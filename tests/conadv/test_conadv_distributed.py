"""ConAdv data-parallel: 2 Horovod ranks and 2 MirroredStrategy replicas equal one process.

What "equal" can mean with BatchNorm: in training mode a BN normalises with the
statistics of the rows it is given, so 2 workers x B/2 rows is *not* the computation
of 1 process x B rows (statistics over B/2 rows vs over B).  The reference is
therefore one process with the same global batch B that *accumulates 2
micro-batches of B/2* (``--micro-batch-size``): ``image_pipeline.train_stream`` gives
worker r the contiguous slice r of every global batch (MirroredStrategy's replica r
gets the same slice), which is exactly the process's micro-batch r, so every BN
(main for the clean rows, auxiliary for the adversarial rows and inside the
attack) sees the same rows, and gradient averaging over workers equals averaging
over micro-batches.  The PGD random start of a micro-batch is seeded by its index in
the global batch (``ConAdv._first_micro_batch``), so worker r draws what micro-batch
r draws.  Each worker makes its own adversarial examples of its slice of the next
batch (its own buffer; only weight gradients are averaged), and those buffers, side
by side, are the process's buffer.  BN moving averages (inference only; each worker
keeps its own and a process updates them once per micro-batch) are not compared.

Real Fashion-MNIST, cifar_resnet8 (width 4, split BN), LARS, tau = 1, 4 steps of
global batch 32; the first step falls back to DisAdv, the next 3 train on the buffer.

The last two tests (``slow``: ~25 s and ~40 s on 2 cores) stop ``train-images`` mid-epoch
under each strategy, resume it and compare with an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import processes
from tests.conadv.test_conadv_resume import final_state, strip
from tests.processes import WORKERS, deterministic_env


# The buffers hold sign(input gradient): every process runs with deterministic kernels, so a
# near-zero gradient is summed in one order everywhere and cannot flip a pixel (see the
# flaky resume test of tests/conadv/test_conadv_resume.py).
def run_checked(cmd: list) -> object:
    return processes.run_checked(cmd, deterministic_env())


def horovodrun_2(horovodrun: Path, *args: str) -> object:
    return processes.horovodrun_2(horovodrun, *args, env=deterministic_env())


GLOBAL_BATCH, STEPS = 32, 4


def _load(path: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    with np.load(path) as data:
        weights = [data[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in data.files))]
        return weights, {k: data[k] for k in data.files if not k.startswith("arr_")}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, dict]:
    """1 process, global batch 32 as 2 accumulated micro-batches of 16."""
    out = tmp_path_factory.mktemp("one_process")
    worker = WORKERS / "hvd_conadv.py"
    run_checked(
        [sys.executable, worker, "--batch", GLOBAL_BATCH, "--micro-batch", 16, "--out", out]
    )
    weights, extra = _load(out / "rank0.npz")
    assert int(extra["workers"]) == int(extra["replicas"]) == 1
    assert int(extra["iterations"]) == int(extra["batches_seen"]) == STEPS
    assert float(extra["stale_fraction"]) == pytest.approx(3 / 4)  # step 0 had no buffer
    assert extra["buffer_images"].shape == (1, GLOBAL_BATCH, 28, 28, 1)
    return weights, extra


def _assert_matches(weights: list, extra: dict, reference: tuple[list, dict]) -> None:
    ref_weights, ref = reference
    assert len(weights) == len(ref_weights) > 0
    for i, (a, b) in enumerate(zip(weights, ref_weights)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"weight {i}")
    np.testing.assert_allclose(extra["slots"], ref["slots"], rtol=1e-4, atol=1e-5)  # LARS
    assert int(extra["iterations"]) == int(extra["batches_seen"]) == STEPS
    assert float(extra["stale_fraction"]) == pytest.approx(3 / 4)


@pytest.mark.horovod
def test_conadv_two_horovod_ranks_equal_one_process_of_two_micro_batches(
    horovodrun: Path, tmp_path: Path, one_process: tuple[list, dict]
) -> None:
    worker = str(WORKERS / "hvd_conadv.py")
    half = str(GLOBAL_BATCH // 2)
    horovodrun_2(horovodrun, worker, "--batch", half, "--micro-batch", half, "--out", str(tmp_path))
    (w0, r0), (w1, r1) = (_load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    assert int(r0["workers"]) == int(r1["workers"]) == 2
    # Both ranks end identical: broadcast start (they were initialised differently) and the
    # same averaged gradients every step.
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(r0["slots"], r1["slots"])
    _assert_matches(w0, r0, one_process)
    # Each rank made its own adversarial batch (of its own images) for the next step, and
    # together they are the one process's buffer.
    assert not np.array_equal(r0["buffer_labels"], r1["buffer_labels"])
    both = np.concatenate([r0["buffer_images"], r1["buffer_images"]], axis=1)
    np.testing.assert_allclose(both, one_process[1]["buffer_images"], atol=1e-5)
    labels = np.concatenate([r0["buffer_labels"], r1["buffer_labels"]], axis=1)
    np.testing.assert_array_equal(labels, one_process[1]["buffer_labels"])


@pytest.mark.horovod
def test_conadv_buffers_survive_the_broadcast_of_a_second_fit(
    horovodrun: Path, tmp_path: Path, one_process: tuple[list, dict]
) -> None:
    """Two ``fit`` calls of 2 steps on 2 ranks == one fit of 4.  The second fit's
    ``BroadcastCallback`` leaves each rank's buffer of adversarial rows alone (it is one of
    the trainer's ``per_worker_variables``); before, it overwrote rank 1's with rank 0's, so
    rank 1 trained step 2 on rank 0's adversarial images and the weights drifted."""
    worker = str(WORKERS / "hvd_conadv.py")
    half = str(GLOBAL_BATCH // 2)
    horovodrun_2(
        horovodrun, worker, "--batch", half, "--micro-batch", half, "--fits", "2",
        "--out", str(tmp_path),
    )  # fmt: skip
    (w0, r0), (_, r1) = (_load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    # (the buffer carries over between the fits: only step 0 falls back to DisAdv)
    _assert_matches(w0, r0, one_process)
    both = np.concatenate([r0["buffer_images"], r1["buffer_images"]], axis=1)
    np.testing.assert_allclose(both, one_process[1]["buffer_images"], atol=1e-5)


def test_conadv_mirrored_strategy_equals_one_device_of_two_micro_batches(
    tmp_path: Path, one_process: tuple[list, dict]
) -> None:
    worker = WORKERS / "mirrored_conadv.py"
    run_checked([sys.executable, worker, "--batch", GLOBAL_BATCH, "--out", tmp_path])
    weights, extra = _load(tmp_path / "mirrored.npz")
    assert int(extra["replicas"]) == 2 and int(extra["workers"]) == 1
    _assert_matches(weights, extra, one_process)
    # Replica r's buffer (a per-replica variable) is the process's rows [16 r, 16 r + 16).
    np.testing.assert_allclose(extra["buffer_images"], one_process[1]["buffer_images"], atol=1e-5)
    np.testing.assert_array_equal(extra["buffer_labels"], one_process[1]["buffer_labels"])


# ---- resume under data parallelism ------------------------------------------------------------
def _assert_resumed_equals_whole(out: Path, files: int) -> None:
    meta_whole, whole = final_state(out / "whole")
    meta_cut, cut = final_state(out / "cut")
    assert meta_whole["global_step"] == meta_cut["global_step"] == 8
    assert [strip(p) for p in meta_whole["paths"]] == [strip(p) for p in meta_cut["paths"]]
    for path, a, b in zip(meta_whole["paths"], whole, cut):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
    # Each worker's own buffer (all its replicas), which the checkpoint cannot hold.
    for name in sorted(os.listdir(out / "whole" / "worker-buffers")):
        with np.load(out / "whole" / "worker-buffers" / name) as a:
            with np.load(out / "cut" / "worker-buffers" / name) as b:
                for key in a.files:
                    np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=name)
    assert len(os.listdir(out / "cut" / "worker-buffers")) == files  # newest two per worker


@pytest.mark.slow
@pytest.mark.horovod
def test_conadv_on_two_horovod_ranks_resumes_exactly(horovodrun: Path, tmp_path: Path) -> None:
    """Stopped mid-epoch and resumed under ``horovodrun -np 2``: rank 0's final checkpoint and
    both ranks' buffers equal an uninterrupted run's.  Rank 1's adversarial batch in flight
    is not in rank 0's checkpoint; without ``WorkerBuffers`` it would restart from rank 0's
    and the averaged gradients of the first resumed step would differ."""
    horovodrun_2(
        horovodrun, str(WORKERS / "hvd_conadv.py"), "--resume-check", "--out", str(tmp_path)
    )
    _assert_resumed_equals_whole(tmp_path, files=4)


@pytest.mark.slow
def test_conadv_on_two_mirrored_replicas_resumes_exactly(tmp_path: Path) -> None:
    """The same under MirroredStrategy (2 logical CPUs): replica 1's buffer is restored from
    the worker file (the checkpoint's variable reads replica 0's), and the optimizer slots
    are built inside the strategy scope when the checkpoint is loaded."""
    run_checked(
        [sys.executable, WORKERS / "mirrored_conadv.py", "--resume-check", "--out", tmp_path]
    )
    _assert_resumed_equals_whole(tmp_path, files=2)


# ---- the shared-pass schedule -------------------------------------------------------------
@pytest.mark.horovod
def test_shared_pass_on_two_ranks_and_two_replicas_equals_one_process(
    horovodrun: Path, tmp_path: Path
) -> None:
    """``--attack-pass shared``: each worker/replica makes the next adversarial batch of its
    own clean rows from its own backward pass; 2 ranks and 2 replicas equal one process of
    2 micro-batches, buffers side by side included."""
    worker = str(WORKERS / "hvd_conadv.py")
    half, shared = str(GLOBAL_BATCH // 2), ("--attack-pass", "shared")
    run_checked([sys.executable, worker, "--batch", GLOBAL_BATCH, "--micro-batch", 16, *shared,
          "--out", tmp_path / "one"])  # fmt: skip
    reference = _load(tmp_path / "one" / "rank0.npz")
    horovodrun_2(horovodrun, worker, "--batch", half, "--micro-batch", half, *shared,
                "--out", str(tmp_path / "hvd"))  # fmt: skip
    (w0, r0), (_, r1) = (_load(tmp_path / "hvd" / f"rank{r}.npz") for r in (0, 1))
    _assert_matches(w0, r0, reference)
    both = np.concatenate([r0["buffer_images"], r1["buffer_images"]], axis=1)
    np.testing.assert_allclose(both, reference[1]["buffer_images"], atol=1e-5)
    run_checked([sys.executable, WORKERS / "mirrored_conadv.py", "--batch", GLOBAL_BATCH, *shared,
          "--out", tmp_path / "mirrored"])  # fmt: skip
    weights, extra = _load(tmp_path / "mirrored" / "mirrored.npz")
    _assert_matches(weights, extra, reference)
    np.testing.assert_allclose(extra["buffer_images"], reference[1]["buffer_images"], atol=1e-5)
