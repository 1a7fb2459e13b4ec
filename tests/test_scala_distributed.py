"""ScaLA under a real ``horovodrun -np 2 --gloo``: identical ranks, equal to one process."""

import sys

import numpy as np

from tests.test_distributed import WORKERS, _horovodrun, _run


def _weights(path):
    data = np.load(path)
    arrays = [data[k] for k in sorted(k for k in data.files if k.startswith("arr_"))]
    return arrays, data


def test_scala_two_horovod_ranks_equal_one_process(horovodrun, tmp_path):
    worker = str(WORKERS / "hvd_scala.py")
    _horovodrun(horovodrun, worker, "--batch", "8", "--out", str(tmp_path / "hvd"))
    _run([sys.executable, worker, "--batch", "16", "--out", str(tmp_path / "single")])
    rank0, meta0 = _weights(tmp_path / "hvd" / "weights_rank0.npz")
    rank1, _ = _weights(tmp_path / "hvd" / "weights_rank1.npz")
    single, meta = _weights(tmp_path / "single" / "weights_rank0.npz")
    assert int(meta0["iterations"]) == int(meta["iterations"]) == 3
    assert float(meta0["regulariser"]) > 0  # the perturbation was on for steps 1 and 2
    for a, b in zip(rank0, rank1):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(rank0, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scala_mirrored_strategy_equals_single_device(tmp_path):
    worker = str(WORKERS / "mirrored_scala.py")
    _run([sys.executable, worker, "--backend", "mirrored", "--out", str(tmp_path)])
    _run([sys.executable, worker, "--backend", "single", "--out", str(tmp_path)])
    mirrored, meta_m = _weights(tmp_path / "mirrored.npz")
    single, meta_s = _weights(tmp_path / "single.npz")
    assert int(meta_m["replicas"]) == 2 and int(meta_s["replicas"]) == 1
    assert int(meta_m["iterations"]) == int(meta_s["iterations"]) == 3
    assert float(meta_s["regulariser"]) > 0
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
