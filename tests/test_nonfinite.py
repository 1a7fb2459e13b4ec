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

from adv_large_batch import checkpointing
from adv_large_batch.trainer import AccumulatingTrainer
from adv_large_batch.training_callbacks import NonFiniteLoss
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
    assert "non-finite loss/gradients at optimizer step 3" in capsys.readouterr().out
    assert int(model.optimizer.iterations.numpy()) == 2  # steps 1, 2 applied; 3 was not
    assert all(np.isfinite(w).all() for w in model.network.get_weights())
    assert checkpointing.latest_checkpoint(str(tmp_path)).endswith("ckpt-00000002")


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy must be one of"):
        NonFiniteLoss("ignore")


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]  # before TF initialises
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from adv_large_batch.distributed import get_backend
    from adv_large_batch.trainer import AccumulatingTrainer
    from adv_large_batch.training_callbacks import NonFiniteLoss

    backend = get_backend("mirrored")
    rng = np.random.RandomState(0)
    x = rng.randn(16, 3).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")
    bad = x[8:12].copy()
    bad[0] = np.nan  # row 0 of the global batch: replica 0's half only

    def trainer():
        keras.utils.set_random_seed(0)
        with backend.scope():
            model = AccumulatingTrainer(
                keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), backend=backend
            )
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        return model

    def state(model):
        return [v.numpy() for v in model.network.weights + model.optimizer.variables]

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
        "finite": all(bool(np.isfinite(w).all()) for w in state(model)),
        "vs_reference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(state(model), state(reference))
        ),
    }))
    """
)


def test_skip_under_mirrored_strategy_leaves_weights_and_step_unchanged():
    """2 replicas, NaN in one replica's half of a batch: neither replica applies it."""
    env = dict(
        os.environ,
        CUDA_VISIBLE_DEVICES="-1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(Path(__file__).parent.parent),
    )
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    print(result)
    assert result["replicas"] == 2
    assert result["nonfinite_steps"] == [1.0]  # the flag is all-reduced: both replicas count it
    assert result["unchanged"] == 0.0  # weights, momentum slots and iterations
    assert result["iterations"] == 3 and result["finite"]
    assert result["vs_reference"] < 1e-6  # == training without the bad batch


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
