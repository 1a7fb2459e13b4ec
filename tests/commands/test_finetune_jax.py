"""``adv-large-batch finetune`` on the JAX backend without TensorFlow: end to end, TF-only
flags refused before any work, and the NumPy input in the TensorFlow stream's order."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from adv_large_batch import cli
from adv_large_batch.commands.jax_checks import backend_problem
from adv_large_batch.commands.run_config import RunConfig
from adv_large_batch.data import text_pipeline
from adv_large_batch.flags import ConfigError
from tests.engine.test_jax_data_parallel import free_port
from tests.processes import REPO, TIMEOUT_S, quiet_env, run_checked

#: ``adv_large_batch.cli.main`` with TensorFlow blocked (``tests/workers/no_tensorflow.py``).
LAUNCHER = (
    "import sys; sys.path.insert(0, 'tests/workers'); import no_tensorflow; "
    "no_tensorflow.block(); from adv_large_batch.cli import main; sys.exit(main())"
)
TINY = (
    "finetune --model tiny-random --train-limit 64 --eval-limit 32 --batch-size 16 "
    "--micro-batch-size 8 --epochs 1 --max-seq-length 32 --verbose 2"
).split()


def jax_cli(*args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, "--backend", "jax", *args]


def jax_env() -> dict[str, str]:
    env = quiet_env()
    env.pop("XLA_FLAGS", None)  # one device: a one-process, one-device run
    # (LLVM's optimisations off: a third of the compile time; results compared only
    # between runs under the same flags)
    return {**env, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def two_processes(*args: str) -> list[str]:
    """The CLI on 2 processes of one job on localhost (one CPU device each,
    ``keras.distribution.initialize``); their outputs."""
    port, procs = free_port(), []
    for rank in range(2):
        env = {
            **jax_env(),
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": str(rank),
        }
        procs.append(subprocess.Popen(
            jax_cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    for rank, (proc, text) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited {proc.returncode}:\n{text[-3000:]}"
    return outputs


def checkpoint(path) -> dict[str, np.ndarray]:  # noqa: ANN001
    """A checkpoint's state by variable path."""
    paths = json.loads((path / "meta.json").read_text())["paths"]
    with np.load(path / "state.npz") as state:
        return {p: state[f"v{i:05d}"] for i, p in enumerate(paths)}


@pytest.mark.slow
def test_tiny_finetune_on_one_device_and_on_two_processes_agree(tmp_path):
    """ScaLA's default configuration, dropout on, 33 validation rows (odd: the 2-process
    evaluation pads a row of weight 0).  The 2-process job ends with the one-device
    run's weights and optimizer state (rtol 1e-5), the same validation logs and final
    metrics.  Before: the evaluation batch could not be split over the devices, a length
    sort per device gave other micro-batches (so other dropout masks) than one device,
    and the chief's learning-rate log and weights file ran collectives alone (the job
    hung).  (Resuming a 2-process JAX job: ``test_train_images_jax.py``; the text
    stream from any step: ``test_numpy_batches_are_...``.)"""
    one, two = tmp_path / "one", tmp_path / "two"
    run = [*TINY, "--eval-limit", "33", "--checkpoint-every", "2"]
    run_checked(jax_cli(*run, "--metrics-out", str(tmp_path / "one.json"),
                        "--checkpoint-dir", str(one)), jax_env())  # fmt: skip
    metrics = json.loads((tmp_path / "one.json").read_text())
    assert 0.0 <= metrics["validation"]["accuracy"] <= 1.0
    assert metrics["steps_run"] == 4 and metrics["config"]["backend"] == "jax"
    assert sorted(p.name for p in one.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000004"]

    two_processes(*run, "--checkpoint-dir", str(two), "--metrics-out", str(tmp_path / "two.json"))
    want, got = checkpoint(one / "ckpt-00000004"), checkpoint(two / "ckpt-00000004")
    assert sorted(want) == sorted(got) and len(want) > 100
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-6, err_msg=path)
    parallel = json.loads((tmp_path / "two.json").read_text())
    for key in ("loss", "regulariser", "val_loss"):
        assert parallel["history"][key] == pytest.approx(metrics["history"][key], rel=1e-5), key
    # Accuracies are argmaxes of logits equal only to rounding: a row whose two logits
    # tie may flip, so they are compared to within one row; the padding row must not be
    # counted (33 rows: the count is a whole number of rows; counted, it was 16 of 34).
    rows = {"accuracy": 64, "val_accuracy": 33}  # 4 steps x 16 rows; the validation rows
    pairs = [(parallel["history"][k][0], metrics["history"][k][0], rows[k]) for k in rows]
    pairs += [(parallel[s]["accuracy"], metrics[s]["accuracy"], 33) for s in ("validation", "test")]
    for got, want, n in pairs:
        assert abs(got * n - round(got * n)) < 1e-3, (got, n)  # whole rows of n
        assert abs(got - want) <= 1.01 / n, (got, want)


@pytest.mark.parametrize(
    "flags, names",
    [
        (["--strategy", "horovod"], ["--strategy horovod", "--strategy auto"]),
        (["--precision", "mixed_float16"], ["--precision mixed_float16", "mixed_bfloat16"]),
    ],
)
def test_tensorflow_only_flags_are_refused_before_any_work(flags, names):
    proc = subprocess.run(
        jax_cli(*TINY, *flags), cwd=REPO, env=jax_env(), capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == cli.EXIT_BAD_INPUT, proc.stderr
    assert all(name in proc.stderr for name in names), proc.stderr
    assert "[finetune]" not in proc.stdout  # nothing was loaded or built


def test_backend_problem_names_each_tensorflow_only_flag():
    from adv_large_batch.engine.jax_distribution import JAX_ALTERNATIVE

    base = RunConfig()
    assert backend_problem(base, "jax") is None
    for strategy in ("horovod", "mirrored", "tpu", "multiworker"):
        run = SimpleNamespace(**{**dataclasses.asdict(base), "strategy": strategy})
        message = backend_problem(run, "jax")
        assert f"--strategy {strategy}" in message and JAX_ALTERNATIVE in message
        assert backend_problem(run, "tensorflow") is None
    profile = RunConfig(profile=True, logdir="/tmp/x")
    assert "--profile" in backend_problem(profile, "jax")


def test_backend_flag_cannot_switch_an_imported_keras(capsys):
    assert cli.main(["--backend", "jax", "info"]) == cli.EXIT_BAD_INPUT
    assert "--backend jax: Keras is already imported" in capsys.readouterr().err


def _features(n: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    lengths = np.random.default_rng(seed).integers(2, width + 1, n)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype("int32")
    ids = (np.arange(n)[:, None] * 1000 + np.arange(width)[None, :]) * mask
    return {"token_ids": ids.astype("int32"), "segment_ids": 0 * mask, "padding_mask": mask}


def test_numpy_batches_are_the_tensorflow_streams_global_batches_sorted_and_split():
    """Rank r of 2: at every step the two ranks together hold the TensorFlow stream's
    global batch (its two ranks' rows), sorted by length (stable), trimmed to the bucket
    of the global batch (so both ranks feed one shape), rank r its r-th contiguous half."""
    features, labels = _features(50, 40), np.arange(50)
    args = (6, 3, 7)  # per-rank batch, epochs, seed
    ours = [
        list(
            text_pipeline.make_epoch_batches(
                features, labels, *args, rank, 2, 5, buckets=(8, 16, 32)
            )
        )
        for rank in (0, 1)
    ]
    theirs = [list(text_pipeline.make_epoch_stream(features, labels, *args, rank, 2, 5))
              for rank in (0, 1)]  # fmt: skip
    assert len(ours[0]) == len(ours[1]) == len(theirs[0]) == 3 * (25 // 6) - 5
    lengths = features["padding_mask"].sum(1)
    for (x0, y0), (x1, y1), (_, t0), (_, t1) in zip(*ours, *theirs):
        rows = np.concatenate([y0, y1])  # labels are the row numbers
        assert sorted(rows) == sorted(np.concatenate([t0.numpy(), t1.numpy()]))
        assert list(lengths[rows]) == sorted(lengths[rows])  # sorted, split in order
        width = x0["token_ids"].shape[1]
        assert x1["token_ids"].shape[1] == width
        assert width == min([b for b in (8, 16, 32) if b >= lengths[rows].max()] + [40])
        for key in features:
            full = features[key][rows]
            np.testing.assert_array_equal(np.concatenate([x0[key], x1[key]]), full[:, :width])
            assert not full[:, width:].any()  # only padding was dropped


def test_one_process_batches_are_the_tensorflow_stream_sorted_by_length():
    features, labels = _features(50, 40), np.arange(50)
    ours = text_pipeline.make_epoch_batches(features, labels, 12, 2, 3)
    theirs = text_pipeline.make_epoch_stream(features, labels, 12, 2, 3)
    lengths = features["padding_mask"].sum(1)
    for (_, y), (_, t) in zip(ours, theirs, strict=True):
        t = t.numpy()
        np.testing.assert_array_equal(y, t[np.argsort(lengths[t], kind="stable")])


def test_sharded_eval_batches_pad_with_weight_zero_rows_and_split_in_order():
    features, labels = _features(11, 40, seed=2), np.arange(11)
    parts = [text_pipeline.make_eval_batches(features, labels, 8, rank=r, size=2, multiple=4)
             for r in (0, 1)]  # fmt: skip
    assert len(parts[0]) == len(parts[1]) == 2
    for i, rows in enumerate(([0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 8])):
        (x0, y0, w0), (x1, y1, w1) = parts[0][i], parts[1][i]
        np.testing.assert_array_equal(np.concatenate([y0, y1]), rows)
        np.testing.assert_array_equal(
            np.concatenate([w0, w1]), [1] * len(set(rows)) + [0] * (len(rows) - len(set(rows)))
        )
        assert x0["token_ids"].shape == x1["token_ids"].shape  # one bucket for the batch
    with pytest.raises(ConfigError, match="multiple=3"):
        text_pipeline.make_eval_batches(features, labels, 8, rank=0, size=2, multiple=3)


def test_numpy_eval_batches_keep_the_order_and_every_row():
    features, labels = _features(10, 40, seed=1), np.arange(10)
    batches = text_pipeline.make_eval_batches(features, labels, 4)
    assert len(batches) == 3
    got = np.concatenate([batches[i][1] for i in range(len(batches))])
    np.testing.assert_array_equal(got, labels)
    ids = [batches[i][0]["token_ids"] for i in range(len(batches))]
    assert all(a.shape[1] in (16, 32, 40) for a in ids)
