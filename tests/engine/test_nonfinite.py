"""A non-finite step is never applied: skipped and counted, or the run stops before it."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from adv_large_batch.engine import checkpointing
from adv_large_batch.engine.callbacks import NonFiniteLoss
from adv_large_batch.engine.resume import StopAtStep, fit_from_step
from adv_large_batch.engine.trainer import AccumulatingTrainer
from tests.tiny_bert import SingleProcess


def data(poison_batch=None):
    rng = np.random.RandomState(0)
    x = rng.randn(16, 3).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")
    if poison_batch is not None:
        x[poison_batch * 4] = np.nan
    return x, y


def trainer(seed=0):
    keras.utils.set_random_seed(seed)
    model = AccumulatingTrainer(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), backend=SingleProcess()
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_skip_policy_equals_training_without_the_bad_batch():
    x, y = data(poison_batch=2)
    model = trainer()
    history = model.fit(
        x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[NonFiniteLoss("skip")]
    )
    assert int(model.optimizer.iterations.numpy()) == 3
    assert history.history["nonfinite_steps"] == [0.25]
    assert np.isfinite(history.history["loss"][0])
    keep = np.r_[0:8, 12:16]
    reference = trainer()
    reference.fit(x[keep], y[keep], batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(model.network.get_weights(), reference.network.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_stop_policy_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    x, y = data(poison_batch=2)
    model = trainer()
    ckpt = checkpointing.StepCheckpoint(str(tmp_path), every=1, steps_per_epoch=4)
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[NonFiniteLoss("stop"), ckpt],
    )
    assert "non-finite loss/gradients at step 3" in capsys.readouterr().out
    assert int(model.optimizer.iterations.numpy()) == 2  # steps 1, 2 applied; 3 was not
    assert model.stopped_nonfinite_at == 3
    assert all(np.isfinite(w).all() for w in model.network.get_weights())
    assert checkpointing.latest_checkpoint(str(tmp_path)).endswith("ckpt-00000002")


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy must be one of"):
        NonFiniteLoss("ignore")


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    precision, bad_row = sys.argv[1], int(sys.argv[2])
    cpu = tf.config.list_physical_devices("CPU")[0]  # before TF initialises
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from adv_large_batch.engine.distributed import get_backend
    from adv_large_batch.engine.trainer import AccumulatingTrainer
    from adv_large_batch.engine.callbacks import NonFiniteLoss

    keras.mixed_precision.set_global_policy(precision)
    backend = get_backend("mirrored")
    rng = np.random.RandomState(0)
    x = rng.randn(16, 3).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")
    bad = x[8:12].copy()
    bad[bad_row] = np.nan  # rows 0-1 of the global batch are replica 0's, rows 2-3 replica 1's

    def trainer():
        keras.utils.set_random_seed(0)
        with backend.scope():
            model = AccumulatingTrainer(
                keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), backend=backend
            )
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        return model

    def state(model):
        return [np.asarray(v.numpy(), "float64")
                for v in model.network.weights + model.optimizer.variables]

    def fit(model, xs, ys):
        return model.fit(xs, ys, batch_size=4, shuffle=False, verbose=0,
                         callbacks=[NonFiniteLoss("skip")]).history

    model = trainer()
    fit(model, x[:8], y[:8])
    before = state(model)
    history = fit(model, bad, y[8:12])
    after = state(model)
    fit(model, x[12:], y[12:])
    reference = trainer()
    fit(reference, np.r_[x[:8], x[12:]], np.r_[y[:8], y[12:]])
    print("RESULT " + json.dumps({
        "replicas": backend.num_replicas_in_sync,
        "nonfinite_steps": history["nonfinite_steps"],
        "unchanged": max(float(np.max(np.abs(a - b))) for a, b in zip(before, after)),
        "iterations": int(model.optimizer.iterations.numpy()),
        "reference_iterations": int(reference.optimizer.iterations.numpy()),
        "finite": all(bool(np.isfinite(w).all()) for w in state(model)),
        "vs_reference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(state(model), state(reference))
        ),
    }))
    """
)


@pytest.mark.parametrize(
    "precision, bad_row",
    [("float32", 0), ("mixed_float16", 3)],
    ids=["float32-replica0", "mixed_float16-replica1"],
)
def test_skip_under_mirrored_strategy_leaves_weights_and_step_unchanged(precision, bad_row):
    """2 replicas, NaN in one replica's half of a batch: neither replica applies it.

    Under mixed_float16 with the NaN on replica 1: Keras' LossScaleOptimizer decides from
    replica 0's gradients, which were finite, so it used to apply the step and the sum of
    the replicas' gradients wrote NaN into every weight; the trainer now decides from the
    all-reduced gradients and loss counts, and leaves the loss scale alone (the optimizer
    variables compared include it)."""
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="-1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(Path(__file__).parents[2]),
    )
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, precision, str(bad_row)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    print(result)
    assert result["replicas"] == 2
    assert result["nonfinite_steps"] == [1.0]  # decided from reduced values: both replicas count it
    assert result["unchanged"] == 0.0  # weights, momentum slots and iterations
    assert result["finite"]
    # float32: 3 applied steps; mixed_float16: the loss scale may also skip overflowing
    # steps (2**15 at the start), exactly as it does without the bad batch.
    assert result["iterations"] == result["reference_iterations"]
    assert precision != "float32" or result["iterations"] == 3
    tolerance = 1e-6 if precision == "float32" else 1e-3  # float16 activations
    assert result["vs_reference"] < tolerance  # == training without the bad batch


def test_mixed_float16_overflow_halves_the_loss_scale_instead_of_counting_as_nonfinite():
    """An overflow of the loss-scaled gradients goes to Keras' LossScaleOptimizer, which
    skips that step and halves its scale; the run goes on and trains once the scale fits."""
    x, y = data()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        network = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model = AccumulatingTrainer(network, backend=SingleProcess())
        # 2**40 overflows float16 at once: the first steps must be skipped and halved.
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.05), initial_scale=2.0**40
        )
        model.compile(optimizer=optimizer, loss="mse")
        before = [w.copy() for w in network.get_weights()]
        history = model.fit(
            np.tile(x, (8, 1)),
            np.tile(y, (8, 1)),
            batch_size=4,
            shuffle=False,
            verbose=0,
            callbacks=[NonFiniteLoss("stop")],
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert float(optimizer.scale_loss(1.0)) < 2.0**40  # the scale came down
    assert history.history["nonfinite_steps"] == [0.0]  # and the run was not stopped
    assert len(history.history["loss"]) == 1
    assert any(not np.allclose(a, b) for a, b in zip(network.get_weights(), before))


def test_a_fully_nonfinite_epoch_logs_nan_loss_not_zero():
    x, y = data()
    x[:] = np.nan
    history = trainer().fit(
        x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[NonFiniteLoss("skip")]
    )
    assert history.history["nonfinite_steps"] == [1.0]
    assert np.isnan(history.history["loss"][0])  # before: 0.0, a perfect-looking epoch


def _fp16_trainer(initial_scale=2.0**15):
    keras.utils.set_random_seed(0)
    network = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model = AccumulatingTrainer(network, backend=SingleProcess())
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.05), initial_scale=initial_scale
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model, optimizer


def test_mixed_float16_diverged_run_is_detected_and_stopped(capsys):
    """A NaN loss under mixed_float16 is a non-finite step, not an overflow for the loss
    scale to absorb: it is counted, the scale is left alone, and ``stop`` ends the run
    (before: nonfinite_steps was always 0 under fp16 and the scale halved for ever)."""
    x, y = data()
    x[:] = np.nan
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, optimizer = _fp16_trainer()
        history = model.fit(
            x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
            callbacks=[NonFiniteLoss("stop")],
        )  # fmt: skip
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.stopped_nonfinite_at == 1
    assert history.history["nonfinite_steps"] == [1.0] and len(history.history["loss"]) == 1
    assert float(optimizer.scale_loss(1.0)) == 2.0**15  # not halved by a non-finite loss
    assert "non-finite loss/gradients at step 1" in capsys.readouterr().out


def test_grad_norm_is_in_loss_units_under_mixed_float16():
    """``grad_norm`` is the applied gradient's norm without the loss scale (before: it
    included the 2**8 scale)."""
    x, y = data()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, _ = _fp16_trainer(initial_scale=2.0**8)  # no overflow at this scale
        half = model.fit(x, y, batch_size=16, shuffle=False, verbose=0).history["grad_norm"][0]
    finally:
        keras.mixed_precision.set_global_policy(previous)
    full = trainer().fit(x, y, batch_size=16, shuffle=False, verbose=0).history["grad_norm"][0]
    assert half == pytest.approx(full, rel=2e-2)


def _stream(x, y, batch):
    """The batches from global step ``start`` on (a deterministic stream, as the CLIs')."""
    import tensorflow as tf

    def stream(start):
        return tf.data.Dataset.from_tensor_slices((x[start * batch :], y[start * batch :])).batch(
            batch
        )

    return stream


def test_skipped_steps_then_stop_and_resume_equals_the_uninterrupted_run(tmp_path):
    """Batch 2 is non-finite (skipped: no update, but its batch is consumed).  The data
    position is the batch counter, so a run stopped after step 4 resumes with batch 4.
    (Before, the checkpoint stored the optimizer's 3 applied steps as the position and the
    resumed run trained on batch 3 a second time.)"""
    rng = np.random.RandomState(1)
    x = rng.randn(32, 3).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")
    x[2 * 4] = np.nan
    stream = _stream(x, y, 4)

    def run(directory, stop=None, resume=False):
        model = trainer()
        start = 0
        if resume:
            path = checkpointing.latest_checkpoint(str(directory))
            start = int(checkpointing.restore_checkpoint(path, model)["global_step"])
        callbacks = [NonFiniteLoss("skip"), checkpointing.StepCheckpoint(str(directory), 1, 8)]
        if stop:
            callbacks.append(StopAtStep(stop))
        fit_from_step(model, stream, start, 8, 1, verbose=0, callbacks=callbacks)
        return model

    whole = run(tmp_path / "whole")
    run(tmp_path / "cut", stop=4)
    meta = checkpointing.read_meta(checkpointing.latest_checkpoint(str(tmp_path / "cut")))
    assert meta["global_step"] == 4  # 4 batches consumed, 3 updates applied
    resumed = run(tmp_path / "cut", resume=True)
    assert int(whole.optimizer.iterations.numpy()) == int(resumed.optimizer.iterations.numpy()) == 7
    assert int(resumed.batches_seen.numpy()) == 8
    for a, b in zip(whole.network.get_weights(), resumed.network.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
