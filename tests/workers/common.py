"""Shared by the distributed worker scripts: a tiny classifier whose ``train_step`` does the
synchronous data-parallel update of ``adv_large_batch.engine.distributed`` (per-worker gradients,
averaged over workers, then one optimizer step), deterministic data, and weight dumps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from adv_large_batch.engine.distributed import Backend

FEATURES, HIDDEN, CLASSES = 8, 16, 3


class DataParallelMLP(keras.Model):
    """Dense 8 -> 16 -> 3 trained by a hand-written data-parallel ``train_step``."""

    def __init__(self, dist: Backend, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dist = dist
        self.hidden = keras.layers.Dense(HIDDEN, activation="tanh")
        self.logits = keras.layers.Dense(CLASSES)
        # Keras 3 logs its metrics' results at epoch end, not train_step's returned values: a
        # custom train_step must track its loss in a metric listed in ``metrics``.
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker]

    def call(self, x: Any) -> Any:
        return self.logits(self.hidden(x))

    def local_loss(self, x: Any, y: Any) -> Any:
        logits = self(x, training=True)
        return keras.ops.mean(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.local_loss(x, y)
            scaled = (
                loss * self.dist.loss_scale()
            )  # hand-written loss: 1/replicas under tf.distribute
        grads = tape.gradient(scaled, self.trainable_variables)
        grads = self.dist.allreduce_gradients(grads)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def build_model(
    dist: Backend, seed: int, make_optimizer: Callable[[], keras.optimizers.Optimizer]
) -> DataParallelMLP:
    """The model, initialised from ``seed`` and compiled, inside ``dist.scope()``.

    The optimizer is created inside the scope too: one created outside has a plain (not
    mirrored) ``iterations`` variable, which every replica then increments (12 after 6 steps on
    2 replicas, silently: weights under SGD still match, but schedules and Adam's bias
    correction would not).
    """
    keras.utils.set_random_seed(seed)
    with dist.scope():
        model = DataParallelMLP(dist)
        model(np.zeros((1, FEATURES), "float32"))  # creates the variables
        model.compile(optimizer=make_optimizer(), jit_compile=dist.jit_compile)
    dist.prepare_optimizer(model.optimizer)  # it gets gradients allreduce_gradients reduced
    return model


def make_data(num_samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=num_samples).astype("int32")
    return x, y


def save_variables(path: Path, variables: Sequence[Any], **extra: Any) -> None:
    arrays = {
        f"v{i:03d}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(variables)
    }
    np.savez(path, **arrays, **extra)
