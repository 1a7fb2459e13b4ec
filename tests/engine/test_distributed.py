"""Tests of adv_large_batch.engine.distributed: the single backend, Horovod being optional, and real
2-worker data-parallel runs (horovodrun + Gloo, MirroredStrategy on 2 logical CPUs) checked
against one process on the same global batches."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.engine.distributed import BACKEND_KINDS, Backend, get_backend
from tests.processes import WORKERS, horovodrun_2, run_checked


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _variables(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [arrays[k] for k in sorted(arrays) if k.startswith("v")]


def _assert_close(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=f"variable {i}")


# --- single process -------------------------------------------------------------------------


def test_single_backend_is_identity() -> None:
    backend = get_backend("single")
    assert isinstance(backend, Backend) and backend.name == "single"
    assert (backend.rank, backend.size, backend.local_rank, backend.local_size) == (0, 1, 0, 1)
    assert backend.is_chief and backend.num_replicas_in_sync == 1 and backend.loss_scale() == 1.0
    assert get_backend("single") is backend
    assert get_backend("auto") is backend  # not launched by horovodrun

    grads = [tf.constant([1.0, 2.0]), None, tf.IndexedSlices(tf.ones((1, 2)), tf.constant([0]))]
    reduced = backend.allreduce_gradients(grads)
    assert len(reduced) == 3 and reduced[0] is grads[0] and reduced[1] is None
    assert float(backend.allreduce_mean(tf.constant(3.0))) == 3.0
    dataset = tf.data.Dataset.range(4)
    assert backend.shard(dataset) is dataset
    variable = tf.Variable(1.0)
    backend.broadcast_variables([variable])
    backend.barrier()
    assert float(variable.numpy()) == 1.0
    with backend.scope():
        pass


def test_unknown_backend_names_value_and_choices() -> None:
    with pytest.raises(ValueError) as err:
        get_backend("bogus")
    message = str(err.value)
    assert "'bogus'" in message
    assert all(kind in message for kind in BACKEND_KINDS)


def test_import_without_horovod() -> None:
    code = textwrap.dedent(
        """
        import sys

        class BlockHorovod:
            def find_spec(self, name, path=None, target=None):
                if name == "horovod" or name.startswith("horovod."):
                    raise ImportError("horovod blocked by the test")
                return None

        sys.meta_path.insert(0, BlockHorovod())
        import adv_large_batch
        import adv_large_batch.engine.distributed as d

        def horovod_available():
            try:
                import horovod.tensorflow  # noqa: F401
            except ImportError:
                return False
            return True

        assert not horovod_available()
        info = d.horovod_build_info()
        assert info["installed"] is False and "blocked" in info["error"], info
        assert d.get_backend("auto").name == "single"
        try:
            d.get_backend("horovod")
        except ImportError as err:
            assert "bash horovodrun_scripts/build_horovod.sh" in str(err), err
            print("OK:", err)
        else:
            raise AssertionError("get_backend('horovod') worked without horovod")
        """
    )
    proc = run_checked([sys.executable, "-c", code])
    assert "OK:" in proc.stdout


# --- Horovod: 2 real processes over Gloo ------------------------------------------------------


@pytest.mark.horovod
def test_horovod_training_matches_single_process(horovodrun: Path, tmp_path: Path) -> None:
    worker = WORKERS / "hvd_train.py"
    horovodrun_2(horovodrun, str(worker), "--mode", "train", "--batch", "4", "--out", str(tmp_path))
    run_checked(
        [sys.executable, worker, "--mode", "train", "--batch", "8", "--out", tmp_path / "single"]
    )

    rank0 = _arrays(tmp_path / "weights_rank0.npz")
    rank1 = _arrays(tmp_path / "weights_rank1.npz")
    single = _arrays(tmp_path / "single" / "weights_rank0.npz")
    assert int(rank0["size"]) == int(rank1["size"]) == 2 and int(single["size"]) == 1
    assert int(rank0["iterations"]) == int(rank1["iterations"]) == int(single["iterations"]) == 6
    # identical on both ranks (same broadcast start, same averaged gradients) ...
    _assert_close(_variables(rank0), _variables(rank1), atol=0)
    # ... and the same SGD trajectory as one process on the union of the two ranks' batches
    _assert_close(_variables(rank0), _variables(single), atol=1e-5)
    # MetricAverageCallback: each rank's epoch loss (its own batches) is replaced by the mean
    # over ranks, which is the single process's epoch loss (equal per-rank batch sizes)
    assert float(rank0["local_loss"]) != float(rank1["local_loss"])
    assert float(rank0["loss"]) == float(rank1["loss"])
    assert float(rank0["loss"]) == pytest.approx(float(single["loss"]), abs=1e-5)


@pytest.mark.horovod
def test_horovod_broadcast_variables(horovodrun: Path, tmp_path: Path) -> None:
    horovodrun_2(
        horovodrun, str(WORKERS / "hvd_train.py"), "--mode", "broadcast", "--out", str(tmp_path)
    )
    before = [_variables(_arrays(tmp_path / f"before_rank{r}.npz")) for r in (0, 1)]
    after = [_variables(_arrays(tmp_path / f"after_rank{r}.npz")) for r in (0, 1)]
    # model kernels/biases, Adam iterations and slots: all differ before the broadcast
    differing = [i for i, (a, b) in enumerate(zip(*before)) if not np.array_equal(a, b)]
    assert len(differing) >= 3 * 4 + 1, differing  # 4 model vars + their 2 Adam slots + iterations
    _assert_close(after[0], before[0], atol=0)  # rank 0 unchanged
    _assert_close(after[1], before[0], atol=0)  # rank 1 now equals rank 0
    # allreduce_gradients: rank r contributes r + 1 -> mean 1.5; IndexedSlices come back dense
    for rank in (0, 1):
        extra = _arrays(tmp_path / f"after_rank{rank}.npz")
        np.testing.assert_array_equal(extra["sparse_mean"], [[0, 0], [1.5, 1.5], [0, 0]])
        np.testing.assert_array_equal(extra["dense_mean"], [1.5, 1.5])
        assert bool(extra["none_kept"])


# --- tf.distribute.MirroredStrategy on 2 logical CPU devices ----------------------------------


def test_mirrored_strategy_matches_single_device(tmp_path: Path) -> None:
    worker = WORKERS / "mirrored_train.py"
    run_checked([sys.executable, worker, "--backend", "mirrored", "--out", tmp_path])
    run_checked([sys.executable, worker, "--backend", "single", "--out", tmp_path])
    mirrored = _arrays(tmp_path / "mirrored.npz")
    single = _arrays(tmp_path / "single.npz")
    assert int(mirrored["replicas"]) == 2 and int(single["replicas"]) == 1
    assert int(mirrored["iterations"]) == int(single["iterations"]) == 6
    _assert_close(_variables(mirrored), _variables(single), atol=1e-5)
