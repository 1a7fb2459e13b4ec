"""The one trainer: micro-batch gradient accumulation -> allreduce -> optimizer step.

Every method of this library (plain fine-tuning, ScaLA, ConAdv) is a subclass
that only says how to get *the gradients of one micro-batch*
(``micro_batch_gradients``).  This class owns the rest of ``train_step``:

1. split the per-replica batch into micro-batches of ``micro_batch_size`` rows
   (ScaLA Algorithm 1, line 11: "local gradients using accumulation") and sum their
   gradients in a ``tf.while_loop``, so only one micro-batch's activations are alive
   at a time.  Micro-batch i of N rows is weighted by ``rows_i / N``: the result is
   the gradient of the mean loss over the batch, also when the last micro-batch is
   shorter (a batch that is not a multiple of ``micro_batch_size``, e.g. the last
   batch of a dataset batched without ``drop_remainder``);
2. average across workers and replicas with the backend: Horovod's grouped allreduce,
   or under tf.distribute one all-reduce in replica context (each replica's loss is
   pre-scaled by ``1 / replicas``), after which every replica holds the applied
   gradient and the optimizer is told not to reduce it again;
3. one ``optimizer.apply``, or none when the step is unsound (a non-finite loss or
   gradient; a mixed_float16 overflow goes to the loss scale): ``engine.update``, which
   decides from reduced values, so the same everywhere;
4. ``batches_seen`` += 1: the checkpointed batch counter, advanced by every step,
   applied or skipped.  It is the data position (a resumed run continues from it) and
   the key of every random draw (``adv_large_batch.engine.randomness``).  The learning-rate
   schedule, t_s of ScaLA and Adam's bias correction follow ``optimizer.iterations``,
   the number of applied updates (a skipped step does not advance them).

A method can also run work *beside* the update (``concurrent_work``, ConAdv
§3.3: the adversarial examples of a future batch): it is traced after
``prepare_batch`` and before the accumulation, and nothing of the update
consumes its results, so in the traced graph the update never waits for it.

Randomness: before each micro-batch the dropout seed generators of the network are
reseeded from (seed, ``batches_seen``, global micro-batch index); methods with several
forward passes per micro-batch reseed per pass (``reseed_dropout``) and draw their
random starts from ``draw_key``.  So workers and replicas draw different masks, and P
workers x n micro-batches draw exactly what one process with P x n micro-batches draws.

Metrics: ``loss`` (the total objective) and the compiled metrics are updated
per micro-batch; subclasses add trackers with ``self.add_tracker``.
``grad_norm`` is the l2 norm of the gradient that is applied (all workers'
and replicas' mean, in loss units: without the loss scale).

Timing: ``step_time_s`` and ``adv_time_s`` (``adv_large_batch.engine.timing``).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from adv_large_batch import keras_internals
from adv_large_batch.engine import randomness, update
from adv_large_batch.engine.batching import (
    batch_size_of,
    dense,
    micro_batch,
    slice_batch,
    split_micro_batches,
    static_batch_size,
)
from adv_large_batch.engine.inputs import batch_spec
from adv_large_batch.engine.timing import (
    StepLog,
    can_time,
    released_after,
    seconds_since,
    timestamp,
    totals,
)
from adv_large_batch.engine.trainer_common import TrainerCommon


def distribution_loss_scale() -> float:
    """1 / replicas under tf.distribute (how Keras scales the compiled loss), else 1."""
    return 1.0 / tf.distribute.get_strategy().num_replicas_in_sync


class _DropoutGenerators:
    """The network's seed generators, found once (a plain object: Keras' attribute
    tracking, which forbids new state on a built model, leaves it alone)."""

    def __init__(self) -> None:
        self._found: list[Any] | None = None

    def of(self, network: keras.Model) -> list[Any]:
        if self._found is None:
            self._found = randomness.seed_generators(network)
        return self._found


class AccumulatingTrainer(TrainerCommon):
    """Wraps a Keras model; ``fit`` runs accumulate -> allreduce -> apply.

    Args:
        network: the model being trained (its ``call`` is used for inference).
        micro_batch_size: rows per forward/backward pass; ``None`` = whole batch.
        backend: an ``adv_large_batch.engine.distributed`` backend; default: the one
            for this process (single, or Horovod under ``horovodrun``).
        seed: the run seed of every random draw of the step (dropout masks, random
            starts), combined with the batch counter and the micro-batch's place;
            ``None``: Keras' global seed (``keras.utils.set_random_seed``), else 0.

    Example:

    ```python
    import keras, numpy as np
    from adv_large_batch.engine.trainer import AccumulatingTrainer

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
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network, micro_batch_size=micro_batch_size, backend=backend, seed=seed, **kwargs
        )
        self.step_time_tracker = self.add_tracker("step_time_s")
        self.adv_time_tracker = self.add_tracker("adv_time_s")
        self._log = StepLog()
        self._dropout = _DropoutGenerators()
        self._step: tf.Tensor | None = None  # the batch counter, while tracing a step
        self._micro: tf.Tensor | None = None  # global micro-batch index, while tracing one
        self._emitted: dict[str, tf.Tensor] = {}  # rows a micro-batch emitted (``emit``)
        self._emitted_rows: dict[str, tf.Tensor] = {}  # ... of the whole batch, after the loop

    # ---- plumbing -----------------------------------------------------------------
    def _default_backend(self) -> Any:
        from adv_large_batch.engine import distributed

        return distributed.get_backend("auto")

    def record_adv_seconds(self, seconds: tf.Tensor) -> None:
        """Add ``seconds`` (from ``timed``) to this step's ``adv_time_s``; call while tracing
        ``prepare_batch``, ``concurrent_work`` or ``micro_batch_gradients``, outside any
        ``tf.cond`` branch (return the seconds from the branch instead)."""
        self._log.record("adv_seconds", seconds)

    def task_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> tf.Tensor:
        """The compiled loss (already scaled by 1/replicas under tf.distribute)."""
        return keras_internals.compute_loss(self, x, y, y_pred, sample_weight, training=True)

    def update_task_metrics(self, loss: tf.Tensor, y: Any, y_pred: Any, sample_weight: Any) -> None:
        """Loss and compiled metrics of one micro-batch; call once per micro-batch.

        A non-finite loss is counted (the step is then not applied) and kept out of
        the loss mean; rows weight the mean, so a short last micro-batch counts less.
        """
        finite = tf.math.is_finite(loss)
        self._log.record("nonfinite_losses", 1.0 - tf.cast(finite, tf.float32))
        rows = tf.cast(batch_size_of(y_pred), tf.float32)
        keras_internals.loss_tracker(self).update_state(
            tf.where(finite, loss, tf.zeros_like(loss)) / distribution_loss_scale(),
            sample_weight=tf.cast(finite, tf.float32) * rows,
        )
        metrics = keras_internals.compile_metrics(self)
        if metrics is not None:
            metrics.update_state(y, y_pred, sample_weight)

    # ---- randomness ---------------------------------------------------------------------
    def global_micro_index(self, local_index: Any, local_count: Any) -> tf.Tensor:
        """Index of this replica's micro-batch ``local_index`` (of ``local_count``) among all
        micro-batches of the global batch (workers and replicas hold consecutive slices)."""
        slot = randomness.replica_slot(getattr(self.backend, "rank", 0))
        return slot * tf.cast(local_count, tf.int64) + tf.cast(local_index, tf.int64)

    def draw_key(self, stream: int, extra: Any = 0, micro: Any = None) -> tf.Tensor:
        """The stateless seed of a draw of this step's current micro-batch (see
        ``adv_large_batch.engine.randomness``); ``micro`` overrides the micro-batch index."""
        step = self._step if self._step is not None else self.batches_seen.value
        micro = self._micro if micro is None else micro
        return randomness.draw_key(self._seed, stream, step, 0 if micro is None else micro, extra)

    def reseed_dropout(self, forward_pass: Any = 0) -> None:
        """Make the network's dropout masks of the next forward pass a function of
        (seed, step, micro-batch, ``forward_pass``); the same pass index -> the same masks."""
        generators = self._dropout.of(self.network)
        if generators:
            randomness.reseed(generators, self.draw_key(randomness.DROPOUT, forward_pass))

    # ---- what a method overrides -----------------------------------------------------
    def prepare_batch(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        """Reorder/transform the whole per-worker batch before it is split (identity)."""
        return x, y, sample_weight

    def micro_batch_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        """Gradients of the (distribution-scaled) mean loss of one micro-batch."""
        self.reseed_dropout()
        with tf.GradientTape() as tape:
            y_pred = self.network(x, training=True)
            loss = self.task_loss(x, y, y_pred, sample_weight)
            scaled = self.optimizer.scale_loss(loss)
        self.update_task_metrics(loss, y, y_pred, sample_weight)
        return tape.gradient(scaled, self.trainable_variables)

    def emitted_specs(self) -> dict[str, tuple[Any, tuple[int, ...]]]:
        """``{name: (dtype, row shape)}`` of the per-row outputs ``micro_batch_gradients``
        hands out with ``emit`` (none here); read them after the accumulation with
        ``emitted_rows(name)``: one row per row of the batch, in order."""
        return {}

    def emit(self, name: str, rows: tf.Tensor) -> None:
        """Hand out ``rows`` (one per row of the current micro-batch) under ``name``."""
        self._emitted[name] = rows

    def emitted_rows(self, name: str) -> tf.Tensor:
        """The rows emitted under ``name`` by every micro-batch of this step, concatenated."""
        return self._emitted_rows[name]

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
    def _micro_batch(
        self, x: Any, y: Any, sample_weight: Any, index: Any, count: Any
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """Dense gradients and emitted rows of one micro-batch, traced with its index set."""
        self._micro = self.global_micro_index(index, count)
        self._emitted = {}
        try:
            grads = self.micro_batch_gradients(x, y, sample_weight)
            emitted = {name: self._emitted[name] for name in self.emitted_specs()}
        finally:
            self._micro, self._emitted = None, {}
        return [dense(g, v) for g, v in zip(grads, self.trainable_variables)], emitted

    def accumulated_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        """Gradient of the mean loss over this replica's batch, one micro-batch at a time."""
        m = self.micro_batch_size
        rows = static_batch_size(x)
        specs = self.emitted_specs()
        if m is None or (rows is not None and rows <= m):
            grads, self._emitted_rows = self._micro_batch(x, y, sample_weight, 0, 1)
            return grads
        zeros = [tf.zeros_like(v) for v in self.trainable_variables]
        if rows is not None and rows % m == 0:  # static micro-batches of m rows
            n = rows // m
            parts = split_micro_batches((x, y, sample_weight), n, m)

            def take(i: tf.Tensor) -> tuple[Any, tf.Tensor]:
                return micro_batch(parts, i), tf.constant(1.0 / n)

        else:  # a dynamic or uneven batch: the last micro-batch may be shorter
            total = batch_size_of(x)
            n = (total + m - 1) // m

            def take(i: tf.Tensor) -> tuple[Any, tf.Tensor]:
                part = slice_batch((x, y, sample_weight), i * m, m)
                return part, tf.cast(batch_size_of(part[0]), tf.float32) / tf.cast(
                    total, tf.float32
                )

        def body(i: tf.Tensor, acc: list[tf.Tensor], logged: tuple, outs: dict) -> tuple:
            (xi, yi, wi), weight = take(i)
            with self._log.scope() as recorded:
                grads, emitted = self._micro_batch(xi, yi, wi, i, n)
            acc = [a + tf.cast(weight, g.dtype) * g for a, g in zip(acc, grads)]
            outs = {k: outs[k].write(i, tf.cast(emitted[k], outs[k].dtype)) for k in outs}
            return i + 1, acc, tuple(a + b for a, b in zip(logged, totals(recorded))), outs

        start = tuple(tf.constant(0.0) for _ in StepLog.FIELDS)
        arrays = {
            name: tf.TensorArray(dtype, size=n, element_shape=[None, *shape], infer_shape=False)
            for name, (dtype, shape) in specs.items()
        }
        _, grads, logged, arrays = tf.while_loop(
            lambda i, *_: i < n,
            body,
            (tf.constant(0), zeros, start, arrays),
            parallel_iterations=1,
        )
        for name, value in zip(StepLog.FIELDS, logged):
            self._log.record(name, value)
        self._emitted_rows = {name: array.concat() for name, array in arrays.items()}
        return grads

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        timing = can_time()
        if timing:
            start = timestamp()
            data = released_after(start, data)
        self._log.reset()
        self._step = tf.identity(self.batches_seen.value)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y, sample_weight = self.prepare_batch(x, y, sample_weight)
        self.concurrent_work(data)
        grads = self.accumulated_gradients(x, y, sample_weight)
        # One reduction for the gradients and the count of non-finite losses: afterwards
        # every worker and replica holds the same values and takes the same decision.
        *grads, bad_losses = self.backend.allreduce_gradients(
            [*grads, self._log.total("nonfinite_losses")]
        )
        decision = update.apply_if_sound(
            self.optimizer, grads, self.trainable_variables, bad_losses
        )
        applied = decision.applied
        self.grad_norm_tracker.update_state(
            decision.grad_norm, sample_weight=tf.cast(applied, tf.float32)
        )
        self.nonfinite_tracker.update_state(tf.cast(decision.diverged, tf.float32))
        self.loss_scale_skip_tracker.update_state(tf.cast(decision.skipped_by_scale, tf.float32))
        adv_seconds = self._log.total("adv_seconds")
        self._log.reset()  # no graph tensors kept after tracing
        self._step, self._emitted_rows = None, {}
        with tf.control_dependencies([applied]):
            self.batches_seen.assign_add(1)
        if timing:
            self.step_time_tracker.update_state(seconds_since(start, applied, adv_seconds))
            self.adv_time_tracker.update_state(adv_seconds)
        return self.get_metrics_result()

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        return self.filter_train_only(super().test_step(data))

    # ---- tracing once ---------------------------------------------------------------
    def build_before_tracing(self, data_spec: Any) -> None:
        """Create the optimizer's and compiled metrics' variables before the step is traced.

        Keras does this only under a distribution strategy; otherwise it creates them
        inside the first trace, and a ``tf.function`` that creates variables is traced
        twice; building first makes it one trace (docs/results.md).
        ``data_spec``: a batch's structure, e.g. ``dataset.element_spec``.
        """
        if keras_internals.distribute_strategy(self) is not None:
            return  # fit's own symbolic build runs under a strategy
        try:
            keras_internals.symbolic_build(self, data_spec)
        except Exception:  # an optimisation only: the first trace builds what is left
            pass

    def _before_fit(self, x: Any, y: Any = None) -> None:
        """Build before the step is traced (one trace), from the structure of a batch of
        ``x`` and ``y`` (``engine.inputs.batch_spec``: a ``tf.data.Dataset`` or arrays;
        before, arrays were left to the first trace, which traced the step twice)."""
        spec = batch_spec(x, y) if self.train_function is None else None
        if spec is not None:
            self.build_before_tracing(spec)

    def train_on_batch(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any) -> Any:
        """``keras.Model.train_on_batch``, built before the step's first trace like ``fit``
        (before: traced twice, the first trace creating the optimizer's slots)."""
        self._before_fit(x, y)
        return super().train_on_batch(x, y, *args, **kwargs)
