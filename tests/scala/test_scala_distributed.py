"""ScaLA data-parallel in its default configuration with dropout on: 2 Horovod ranks and 2
MirroredStrategy replicas equal one process accumulating the same micro-batches, and the
ranks draw different dropout masks and random starts."""

import sys

import numpy as np
import pytest

from tests.processes import WORKERS, horovodrun_2, run_checked


def _weights(path):
    data = np.load(path)
    arrays = [data[k] for k in sorted(k for k in data.files if k.startswith("arr_"))]
    return arrays, data


@pytest.mark.horovod
def test_scala_two_horovod_ranks_equal_one_process(horovodrun, tmp_path):
    """Dropout masks and random starts are keyed by the micro-batch's place in the global
    batch: rank r's micro-batch j draws what the one process's micro-batch 2r + j draws.
    (Before: every rank drew the same masks and starts as rank 0, and this failed.)"""
    worker = str(WORKERS / "hvd_scala.py")
    horovodrun_2(horovodrun, worker, "--batch", "8", "--out", str(tmp_path / "hvd"))
    run_checked([sys.executable, worker, "--batch", "16", "--out", str(tmp_path / "single")])
    rank0, meta0 = _weights(tmp_path / "hvd" / "weights_rank0.npz")
    rank1, _ = _weights(tmp_path / "hvd" / "weights_rank1.npz")
    single, meta = _weights(tmp_path / "single" / "weights_rank0.npz")
    assert int(meta0["iterations"]) == int(meta["iterations"]) == 3
    assert int(meta0["batches_seen"]) == 3
    assert float(meta0["regulariser"]) > 0  # the perturbation was on for steps 1 and 2
    for a, b in zip(rank0, rank1):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(rank0, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.horovod
def test_scala_ranks_draw_their_own_dropout_masks_and_starts(horovodrun, tmp_path):
    """The same batches on both ranks: their local losses and regularisers differ only
    because their dropout masks and random starts do (before: they were equal)."""
    worker = str(WORKERS / "hvd_scala.py")
    horovodrun_2(horovodrun, worker, "--batch", "8", "--same-data", "--out", str(tmp_path))
    _, r0 = _weights(tmp_path / "weights_rank0.npz")
    _, r1 = _weights(tmp_path / "weights_rank1.npz")
    for key in ("local_task_loss", "local_regulariser", "local_regulariser_y0"):
        assert float(r0[key]) > 0 and float(r1[key]) > 0, key
        assert abs(float(r0[key]) - float(r1[key])) > 1e-6 * abs(float(r0[key])), key


def test_scala_mirrored_strategy_equals_single_device(tmp_path):
    """2 replicas with dropout on == one device with twice the micro-batches; also the
    logged gradient norm is the applied (all-replica) gradient's, not a mean of the
    replicas' 1/2-scaled local norms."""
    worker = str(WORKERS / "mirrored_scala.py")
    run_checked([sys.executable, worker, "--backend", "mirrored", "--out", str(tmp_path)])
    run_checked([sys.executable, worker, "--backend", "single", "--out", str(tmp_path)])
    mirrored, meta_m = _weights(tmp_path / "mirrored.npz")
    single, meta_s = _weights(tmp_path / "single.npz")
    assert int(meta_m["replicas"]) == 2 and int(meta_s["replicas"]) == 1
    assert int(meta_m["iterations"]) == int(meta_s["iterations"]) == 3
    assert float(meta_s["regulariser"]) > 0
    assert float(meta_m["grad_norm"]) == pytest.approx(float(meta_s["grad_norm"]), rel=1e-4)
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
