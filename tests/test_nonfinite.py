"""A non-finite step is never applied: skipped and counted, or the run stops before it."""

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
