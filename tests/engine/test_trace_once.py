"""``fit`` traces the training step once (the variables exist before the first trace).

A ``tf.function`` that creates variables while tracing is traced a second time;
``AccumulatingTrainer.fit`` builds the optimizer and metric variables first, for
every method (ScaLA, ConAdv's three), on a ``tf.data.Dataset`` or on arrays, and every
later epoch reuses the trace.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
from adv_large_batch.models.image_models import build_image_model
from adv_large_batch.scala import ScaLA, ScaLAConfig
from tests.tiny_bert import SingleProcess, tiny_classifier, token_batch


def counting(cls):
    class Counting(cls):
        traces = 0

        def train_step(self, data):
            type(self).traces += 1  # Python runs only while tracing
            return super().train_step(data)

    return Counting


def counting_scala():
    """A compiled tiny ScaLA classifier that counts its step's traces."""
    model = counting(ScaLA)(
        tiny_classifier(seed=0), ScaLAConfig(start_step=1), backend=SingleProcess()
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def test_scala_fit_traces_the_step_once():
    model = counting_scala()
    x, y = token_batch(32, seed=1)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
    model.fit(ds, epochs=2, verbose=0)
    assert type(model).traces == 1


@pytest.mark.parametrize("call", ["fit", "train_on_batch"])
def test_scala_on_arrays_traces_the_step_once(call):
    """``fit(x, y)`` on NumPy arrays (what raw strings become, the README's notebook path)
    and ``train_on_batch`` build first too (before: only ``fit`` on a ``tf.data.Dataset``
    did, so the step was traced twice: 55 s -> 29 s for the bundled MiniLM's first epoch
    in the README's example)."""
    model = counting_scala()
    x, y = token_batch(16, seed=1)
    x = {key: np.asarray(value) for key, value in x.items()}
    if call == "fit":
        model.fit(x, np.asarray(y), batch_size=8, epochs=2, verbose=0)
    else:
        for rows in (slice(0, 8), slice(8, 16), slice(0, 8), slice(8, 16)):
            model.train_on_batch({k: v[rows] for k, v in x.items()}, np.asarray(y)[rows])
    assert type(model).traces == 1
    assert model.optimizer.built and int(model.optimizer.iterations.numpy()) == 4


@pytest.mark.parametrize("method", ["baseline", "disadv", "conadv"])
def test_conadv_fit_traces_the_step_once(method):
    keras.utils.set_random_seed(0)
    cfg = ConAdvConfig(method=method, eps=4)
    network = build_image_model("cifar_resnet8", (8, 8, 1), 3, split_bn=cfg.adversarial, width=2)
    model = counting(ConAdv)(
        network, cfg, backend=SingleProcess(), batch_size=8 if cfg.buffered else None
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.RandomState(0)
    images = rng.rand(40, 8, 8, 1).astype("float32")
    labels = rng.randint(0, 3, 40).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8, drop_remainder=True)
    if cfg.buffered:
        ds = pair_with_future(ds, 1)
    model.fit(ds, epochs=2, verbose=0)
    assert type(model).traces == 1
