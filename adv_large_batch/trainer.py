"""The one trainer: micro-batch gradient accumulation -> allreduce -> optimizer step.

Every method of this library (plain fine-tuning, ScaLA, ConAdv) is a subclass
that only says how to get *the gradients of one micro-batch*
(``micro_batch_gradients``).  This class owns the rest of ``train_step``:

1. split the per-worker batch into ``n = batch / micro_batch_size`` equal
   micro-batches (ScaLA Algorithm 1, line 11: "local gradients using
   accumulation"), and sum their gradients in a ``tf.while_loop`` so only one
   micro-batch's activations are alive at a time;
2. divide by ``n``: with equal micro-batches the mean of the micro-batch means is
   the mean over the whole batch, the same rule as one big batch;
3. average across workers with the backend (Horovod: one grouped allreduce;
   tf.distribute: the Keras optimizer sums replicas, the loss is pre-scaled);
4. one ``optimizer.apply`` — skipped when any averaged gradient is non-finite
   (counted in the ``nonfinite_steps`` metric; ``NonFiniteLoss`` then stops the
   run, or lets it go on, as configured).

A method can also run work *beside* the update (``concurrent_work``, ConAdv
§3.3: the adversarial examples of a future batch): it is traced after
``prepare_batch`` and before the accumulation, and nothing of the update
consumes its results, so in the traced graph the update never waits for it.

Metrics: ``loss`` (the total objective) and the compiled metrics are updated
per micro-batch; subclasses add trackers with ``self.add_tracker``.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def distribution_loss_scale() -> float:
    """1 / replicas under tf.distribute (how Keras scales the compiled loss), else 1."""
    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


def all_finite(tensors: list[tf.Tensor]) -> tf.Tensor:
    """True when every entry of every tensor is finite."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def slice_batch(structure: Any, start: tf.Tensor, size: int) -> Any:
    """Rows [start, start + size) of every tensor in a nested structure (None kept)."""
    return tf.nest.map_structure(
        lambda t: None if t is None else t[start : start + size], structure
    )


def batch_size_of(structure: Any) -> tf.Tensor:
    first = next(t for t in tf.nest.flatten(structure) if t is not None)
    return tf.shape(first)[0]


class AccumulatingTrainer(keras.Model):
    """Wraps a Keras model; ``fit`` runs accumulate -> allreduce -> apply.

    Args:
        network: the model being trained (its ``call`` is used for inference).
        micro_batch_size: rows per forward/backward pass; ``None`` = whole batch.
            The per-worker batch must be a multiple of it.
        backend: an ``adv_large_batch.distributed`` backend; default: the one
            for this process (single, or Horovod under ``horovodrun``).

    Example:

    ```python
    trainer = AccumulatingTrainer(keras.Sequential([keras.layers.Dense(2)]),
                                  micro_batch_size=8)
    trainer.compile(optimizer="sgd", loss="mse")
    trainer.fit(np.ones((32, 3)), np.zeros((32, 2)), batch_size=32)
    ```
    """

    def __init__(
        self,
        network: keras.Model,
        micro_batch_size: int | None = None,
        backend: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        self.network = network
        self.micro_batch_size = micro_batch_size
        if backend is None:
            from adv_large_batch import distributed

            backend = distributed.get_backend("auto")
        self.backend = backend
        self._train_only_metric_names: set[str] = set()
        self.grad_norm_tracker = self.add_tracker("grad_norm")
        self.nonfinite_tracker = self.add_tracker("nonfinite_steps")

    # ---- plumbing -----------------------------------------------------------------
    def add_tracker(self, name: str) -> keras.metrics.Mean:
        """A per-epoch mean of a train-only scalar (shown in logs and TensorBoard)."""
        self._train_only_metric_names.add(name)
        return keras.metrics.Mean(name=name)

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.network(inputs, training=training)

    def task_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
        """The compiled loss (already scaled by 1/replicas under tf.distribute)."""
        return self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )

    def update_task_metrics(self, loss: tf.Tensor, y: Any, y_pred: Any, sample_weight: Any) -> None:
        finite = tf.cast(tf.math.is_finite(loss), loss.dtype)  # a NaN step does not poison the mean
        self._loss_tracker.update_state(
            tf.where(finite > 0, loss, 0.0) / distribution_loss_scale(), sample_weight=finite
        )
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, y_pred, sample_weight)

    # ---- what a method overrides -----------------------------------------------------
    def prepare_batch(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        """Reorder/transform the whole per-worker batch before it is split (identity)."""
        return x, y, sample_weight

    def micro_batch_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        """Gradients of the (distribution-scaled) loss of one micro-batch."""
        with tf.GradientTape() as tape:
            y_pred = self.network(x, training=True)
            loss = self.task_loss(x, y, y_pred, sample_weight)
            scaled = self.optimizer.scale_loss(loss)
        self.update_task_metrics(loss, y, y_pred, sample_weight)
        return tape.gradient(scaled, self.trainable_variables)

    def concurrent_work(self, data: Any) -> None:
        """Work of this step that the update must not wait for (none here).

        Gets the step's raw ``data``.  Traced after ``prepare_batch`` and before the
        accumulation; to stay off the update's critical path it must read the
        variables it needs *once, up front* (e.g. ``tf.identity`` of each value, then
        ``network.stateless_call``) and write only variables the update does not read
        in this step; otherwise TensorFlow's automatic control dependencies make the
        update's variable writes wait for its reads.
        """

    # ---- the step ------------------------------------------------------------------
    def _dense_gradients(self, grads: list[Any]) -> list[tf.Tensor]:
        out = []
        for g, v in zip(grads, self.trainable_variables):
            if g is None:
                g = tf.zeros_like(v)
            elif isinstance(g, tf.IndexedSlices):
                g = tf.convert_to_tensor(g)
            out.append(g)
        return out

    def accumulated_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        """Mean of the micro-batch gradients over the per-worker batch."""
        m = self.micro_batch_size
        if m is None:
            return self._dense_gradients(self.micro_batch_gradients(x, y, sample_weight))
        batch = batch_size_of(x)
        tf.debugging.assert_equal(
            batch % m,
            0,
            message=f"per-worker batch must be a multiple of micro_batch_size={m}",
        )
        n = batch // m

        def body(i: tf.Tensor, acc: list[tf.Tensor]) -> tuple[tf.Tensor, list[tf.Tensor]]:
            start = i * m
            grads = self.micro_batch_gradients(
                slice_batch(x, start, m),
                slice_batch(y, start, m),
                slice_batch(sample_weight, start, m),
            )
            return i + 1, [a + g for a, g in zip(acc, self._dense_gradients(grads))]

        zeros = [tf.zeros_like(v) for v in self.trainable_variables]
        _, total = tf.while_loop(
            lambda i, _: i < n, body, (tf.constant(0), zeros), parallel_iterations=1
        )
        return [g / tf.cast(n, g.dtype) for g in total]

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y, sample_weight = self.prepare_batch(x, y, sample_weight)
        self.concurrent_work(data)
        grads = self.accumulated_gradients(x, y, sample_weight)
        grads = self.backend.allreduce_gradients(grads)
        finite = all_finite(grads)  # the same on every worker: the grads are averaged
        self.nonfinite_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
        self.grad_norm_tracker.update_state(
            tf.linalg.global_norm(grads), sample_weight=tf.cast(finite, tf.float32)
        )
        if tf.distribute.has_strategy():
            # A cond around the cross-replica update is not supported; NonFiniteLoss
            # stops the run right after (the last checkpoint stays intact).
            self.optimizer.apply(grads, self.trainable_variables)
        else:
            if not self.optimizer.built:  # variables cannot be created inside the cond
                self.optimizer.build(self.trainable_variables)

            def update() -> tf.Tensor:
                self.optimizer.apply(grads, self.trainable_variables)
                return tf.constant(True)

            # A non-finite gradient never reaches the weights or the optimizer slots.
            tf.cond(finite, update, lambda: tf.constant(False))
        return self.get_metrics_result()

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if k not in self._train_only_metric_names}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "micro_batch_size": self.micro_batch_size,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AccumulatingTrainer":
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
