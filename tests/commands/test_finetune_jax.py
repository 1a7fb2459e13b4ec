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


@pytest.mark.slow
def test_tiny_finetune_runs_on_jax_without_tensorflow(tmp_path):
    out, ckpt = tmp_path / "metrics.json", tmp_path / "ckpt"
    cmd = jax_cli(*TINY, "--metrics-out", str(out), "--checkpoint-dir", str(ckpt),
                  "--checkpoint-every", "2")  # fmt: skip
    run_checked(cmd, jax_env())
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics["validation"]["accuracy"] <= 1.0
    assert metrics["steps_run"] == 4 and metrics["config"]["backend"] == "jax"
    assert sorted(p.name for p in ckpt.glob("ckpt-*")) == ["ckpt-00000002", "ckpt-00000004"]


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


def test_numpy_batches_follow_the_tensorflow_stream_trimmed_to_buckets():
    features, labels = _features(50, 40), np.arange(50)
    args = (labels, 6, 3, 7, 1, 2, 5)  # batch, epochs, seed, rank 1 of 2, from step 5
    ours = list(text_pipeline.make_epoch_batches(features, *args, buckets=(8, 16, 32)))
    theirs = list(text_pipeline.make_epoch_stream(features, *args))
    assert len(ours) == len(theirs) == 3 * (25 // 6) - 5
    for (x, y), (tx, ty) in zip(ours, theirs):
        np.testing.assert_array_equal(y, ty.numpy())
        longest = int(x["padding_mask"].sum(1).max())
        width = x["token_ids"].shape[1]
        assert width == min([b for b in (8, 16, 32) if b >= longest] + [40])
        for key, value in x.items():
            full = tx[key].numpy()
            np.testing.assert_array_equal(value, full[:, :width])
            assert not full[:, width:].any()  # only padding was dropped


def test_numpy_eval_batches_keep_the_order_and_every_row():
    features, labels = _features(10, 40, seed=1), np.arange(10)
    batches = text_pipeline.make_eval_batches(features, labels, 4)
    assert len(batches) == 3
    got = np.concatenate([batches[i][1] for i in range(len(batches))])
    np.testing.assert_array_equal(got, labels)
    ids = [batches[i][0]["token_ids"] for i in range(len(batches))]
    assert all(a.shape[1] in (16, 32, 40) for a in ids)
