"""The JAX trainer shell: micro-batch accumulation -> one gradient reduction -> one step.

The JAX counterpart of ``AccumulatingTrainer`` (``engine/trainer.py``), built on Keras 3's
stateless JAX step ``train_step(state, data) -> (logs, state)``, which Keras compiles with
``jax.jit`` (and, under ``keras.distribution.DataParallel``, with the variables replicated
and the batch split over the devices):

1. each device sorts/prepares its own rows (``prepare_batch``) and splits them into
   micro-batches of ``micro_batch_size`` rows; ``jax.lax.scan`` runs them one after the
   other in one compiled program (only one micro-batch's activations alive at a time),
   summing ``jax.value_and_grad`` of ``micro_batch_loss`` weighted by ``rows_i / N``; a
   shorter last micro-batch (a per-device batch that is not a multiple of the
   micro-batch) runs once more after the scan with its own weight;
2. under data parallelism that work runs per device inside ``jax.shard_map`` and ends
   in ONE ``pmean`` of the gradients (a single all-reduce per optimizer step, not one
   per micro-batch);
3. ``optimizer.stateless_apply``, kept only when the step is sound (every micro-batch's
   loss finite everywhere and the reduced gradient finite): otherwise the weights and
   the optimizer's state, ``iterations`` included, stay as they were
   (``nonfinite_steps``), as on TensorFlow;
4. ``batches_seen`` += 1, applied or skipped: the data position and the key of every draw.

Randomness, as on TensorFlow (``engine/randomness``): every forward pass of a micro-batch
runs with the network's dropout generators set to ``fold_in(draw key, i)``, the key a pure
function of (run seed, stream, ``batches_seen``, global micro-batch index, pass).  The
global index is ``device slot x micro-batches per device + i``, so P devices draw exactly
what one device accumulating P x n micro-batches of the same global batch draws, and
different devices draw different masks.

Mixed precision: ``mixed_bfloat16`` runs as it is; ``mixed_float16`` (a loss-scaled
optimizer) is refused at ``compile``.  Step timers (``step_time_s``) are TensorFlow-only.

Example (no TensorFlow needed):

```python
import os
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras, numpy as np
if keras.config.backend() == "jax":
    from adv_large_batch.engine.jax_trainer import JaxAccumulatingTrainer

    trainer = JaxAccumulatingTrainer(keras.Sequential([keras.layers.Dense(2)]),
                                     micro_batch_size=8)
    trainer.compile(optimizer="sgd", loss="mse")
    trainer.fit(np.ones((32, 3)), np.zeros((32, 2)), batch_size=32, verbose=0)
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

from adv_large_batch import keras_internals
from adv_large_batch.engine import randomness
from adv_large_batch.engine.trainer_common import TrainerCommon

#: Keys of ``micro_batch_loss``'s aux: per-row outputs and per-micro-batch scalars.
ROWS, SCALARS = "rows", "scalars"


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """Where a micro-batch sits (traced values): the batch counter ``step``, its global
    index ``micro`` among all micro-batches of the global batch, the optimizer's applied
    steps ``iterations`` and the step's non-trainable values (to read e.g. t_s)."""

    step: Any
    micro: Any
    iterations: Any
    non_trainable: list[Any]


def _tree_map(fn: Any, *trees: Any) -> Any:
    import jax

    return jax.tree.map(fn, *trees)


def _varying(tree: Any, axis: str) -> Any:
    """``tree`` marked as varying over the mesh axis ``axis`` inside ``shard_map``
    (``jax.lax.pcast``; ``pvary`` on JAX versions before it)."""
    import jax

    cast = getattr(jax.lax, "pcast", None)
    if cast is not None:
        return jax.tree.map(lambda t: cast(t, (axis,), to="varying"), tree)
    return jax.lax.pvary(tree, (axis,))


def _rows_of(x: Any) -> int:
    import jax

    return int(jax.tree.leaves(x)[0].shape[0])


class JaxAccumulatingTrainer(TrainerCommon):
    """Wraps a Keras model; ``fit`` on the JAX backend runs accumulate -> reduce -> apply.

    The arguments are ``AccumulatingTrainer``'s (``TrainerCommon``); ``backend`` defaults
    to this process's ``engine.jax_distribution.get_jax_backend()``.  A method overrides
    ``micro_batch_loss`` (and ``prepare_batch``, ``method_trackers``).
    """

    def _default_backend(self) -> Any:
        from adv_large_batch.engine.jax_distribution import get_jax_backend

        return get_jax_backend()

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``TrainerCommon.compile``; refuses a loss-scaled optimizer (``mixed_float16``)."""
        super().compile(*args, **kwargs)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "mixed_float16 (a loss-scaled optimizer) is not supported on the JAX backend; "
                "use the mixed_bfloat16 policy (--precision mixed_bfloat16), which needs no "
                "loss scale, or float32"
            )

    # ---- variables by role ----------------------------------------------------------
    def _position(self, variable: Any, variables: list[Any]) -> int:
        for i, v in enumerate(variables):
            if v is variable:
                return i
        raise ValueError(f"variable {variable.path} is not among the model's variables")

    def value_of(self, variable: Any, non_trainable: list[Any]) -> Any:
        """The value of a non-trainable ``variable`` of this model in a step's state."""
        return non_trainable[self._position(variable, self.non_trainable_variables)]

    def _seed_positions(self) -> list[int]:
        if not hasattr(self, "_seed_slots"):
            generators = randomness.seed_generators(self.network)
            states = [self._position(g.state, self.non_trainable_variables) for g in generators]
            object.__setattr__(self, "_seed_slots", states)  # not tracked by Keras
        return self._seed_slots  # type: ignore[attr-defined]

    def stateless(self, trainable: list[Any], non_trainable: list[Any], key: Any = None) -> Any:
        """A ``keras.StatelessScope`` where the model's variables read ``trainable`` and
        ``non_trainable``, the dropout generators set from ``key`` (None: as given)."""
        values = list(non_trainable)
        positions = self._seed_positions()
        if key is not None and positions:
            for pos, state in zip(positions, randomness.jax_generator_states(key, len(positions))):
                values[pos] = state.astype(values[pos].dtype)
        mapping = list(zip(self.trainable_variables, trainable))
        mapping += list(zip(self.non_trainable_variables, values))
        return keras.StatelessScope(state_mapping=mapping)

    def draw_key(self, where: MicroBatch, stream: int, extra: Any = 0) -> Any:
        """The key of a draw of the micro-batch ``where`` (``randomness.jax_draw_key``)."""
        return randomness.jax_draw_key(self._seed, stream, where.step, where.micro, extra)

    def dropout_key(self, where: MicroBatch, forward_pass: int = 0) -> Any:
        """The dropout key of forward pass ``forward_pass`` of the micro-batch ``where``."""
        return self.draw_key(where, randomness.DROPOUT, forward_pass)

    def task_loss(self, x: Any, y: Any, y_pred: Any, sample_weight: Any) -> Any:
        """The compiled loss (call inside ``stateless``)."""
        return keras_internals.compute_loss(self, x, y, y_pred, sample_weight, training=True)

    # ---- what a method overrides -----------------------------------------------------
    def prepare_batch(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        """Reorder/transform one device's batch before it is split (identity)."""
        return x, y, sample_weight

    def micro_batch_loss(
        self,
        trainable: list[Any],
        non_trainable: list[Any],
        x: Any,
        y: Any,
        w: Any,
        where: MicroBatch,
    ) -> tuple[Any, dict[str, dict[str, Any]]]:
        """``(loss, aux)`` of one micro-batch, a pure function of ``trainable`` (which
        ``jax.value_and_grad`` differentiates): the mean loss over its rows, and
        ``aux = {ROWS: {"y_pred": ...}, SCALARS: {name: scalar}}``."""
        with self.stateless(trainable, non_trainable, self.dropout_key(where)):
            y_pred = self.network(x, training=True)
            loss = self.task_loss(x, y, y_pred, w)
        return loss, {ROWS: {"y_pred": y_pred}, SCALARS: {}}

    def method_trackers(self) -> dict[str, Any]:
        """``{scalar name: tracker}``: the per-micro-batch scalars of ``micro_batch_loss``'s
        aux, each tracked as a mean over the micro-batches (none here)."""
        return {}

    # ---- the step ------------------------------------------------------------------
    def _local_gradients(
        self, trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple, slot: Any
    ) -> tuple[list[Any], dict[str, Any], tuple]:
        """Mean-loss gradient of this device's rows, accumulated micro-batch by micro-batch."""
        import jax
        import jax.numpy as jnp

        step, iterations = clock
        data = self.prepare_batch(*data)
        rows = _rows_of(data[0])
        m = min(self.micro_batch_size or rows, rows)
        full, rest = divmod(rows, m)
        count = full + (1 if rest else 0)
        grad_fn = jax.value_and_grad(self.micro_batch_loss, has_aux=True)

        def one(part: tuple, index: Any, size: int) -> tuple[list[Any], dict[str, Any]]:
            where = MicroBatch(step, slot * count + index, iterations, non_trainable)
            (loss, aux), grads = grad_fn(trainable, non_trainable, *part, where)
            aux[SCALARS] = {**aux[SCALARS], "loss": loss, "rows": jnp.float32(size)}
            return [g * (size / rows) for g in grads], aux

        def body(total: list[Any], args: tuple) -> tuple[list[Any], dict[str, Any]]:
            grads, aux = one(args[0], args[1], m)
            return [t + g for t, g in zip(total, grads)], aux

        head = _tree_map(lambda t: t[: full * m].reshape((full, m, *t.shape[1:])), data)
        zeros = [jnp.zeros_like(v) for v in trainable]  # varying like the gradients
        total, aux = jax.lax.scan(body, zeros, (head, jnp.arange(full)))
        aux[ROWS] = _tree_map(lambda t: t.reshape((full * m, *t.shape[2:])), aux[ROWS])
        if rest:
            tail = _tree_map(lambda t: t[full * m :], data)
            grads, last = one(tail, full, rest)
            total = [t + g for t, g in zip(total, grads)]
            aux = _tree_map(
                lambda a, b: jnp.concatenate([a, b if a.ndim == b.ndim else b[None]]), aux, last
            )
        return total, aux, data[1:]

    def _gradients(
        self, trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple
    ) -> tuple[list[Any], dict[str, Any], tuple]:
        """The reduced gradient of the global batch: per device, then one ``pmean``."""
        import jax
        from jax.sharding import PartitionSpec

        mesh, axis = getattr(self.backend, "mesh", None), getattr(self.backend, "axis", None)
        if mesh is None or mesh.size == 1:
            return self._local_gradients(trainable, non_trainable, data, clock, 0)

        def local(trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple):
            # Differentiating a replicated value inside shard_map makes JAX sum its gradient
            # over the devices at once (in every micro-batch); as a per-device ("varying")
            # value its gradient stays local until the one pmean below.
            trainable = _varying(trainable, axis)
            slot = jax.lax.axis_index(axis)
            grads, aux, rest = self._local_gradients(trainable, non_trainable, data, clock, slot)
            return jax.lax.pmean(grads, axis), aux, rest

        split, same = PartitionSpec(axis), PartitionSpec()
        data_specs = tuple(None if d is None else split for d in data)
        sharded = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(same, same, data_specs, same),
            out_specs=(same, split, split),
        )
        return sharded(trainable, non_trainable, data, clock)

    @property
    def compiled_programs(self) -> int:
        """How many times the train step was traced: one compiled program per input shape
        (sequence-length bucket, a short last batch)."""
        return getattr(self, "_traces", 0)

    def train_step(self, state: tuple, data: Any) -> tuple[dict[str, Any], tuple]:
        import jax.numpy as jnp

        object.__setattr__(self, "_traces", self.compiled_programs + 1)  # runs while tracing

        trainable, non_trainable, optimizer_vars, metric_vars = state
        x, y, w = keras.utils.unpack_x_y_sample_weight(data)
        step = self.value_of(self.batches_seen, non_trainable)
        iterations = optimizer_vars[
            self._position(self.optimizer.iterations, self.optimizer.variables)
        ]
        grads, aux, (y, w) = self._gradients(
            trainable, non_trainable, (x, y, w), (step, iterations)
        )
        losses = aux[SCALARS]["loss"]
        finite_grads = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in grads]))
        sound = jnp.all(jnp.isfinite(losses)) & finite_grads
        new_trainable, new_optimizer = self.optimizer.stateless_apply(
            optimizer_vars, grads, trainable
        )
        trainable = [jnp.where(sound, n, o) for n, o in zip(new_trainable, trainable)]
        optimizer_vars = [jnp.where(sound, n, o) for n, o in zip(new_optimizer, optimizer_vars)]
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype("float32"))) for g in grads))
        non_trainable = list(non_trainable)
        position = self._position(self.batches_seen, self.non_trainable_variables)
        non_trainable[position] = step + 1
        logs, metric_vars = self._update_metrics(metric_vars, aux, y, w, sound, norm)
        return logs, (trainable, non_trainable, optimizer_vars, metric_vars)

    def _update_metrics(
        self, metric_vars: list[Any], aux: dict[str, Any], y: Any, w: Any, sound: Any, norm: Any
    ) -> tuple[dict[str, Any], list[Any]]:
        scalars = aux[SCALARS]
        losses = scalars["loss"]
        finite = ops.cast(ops.isfinite(losses), "float32")
        mapping = list(zip(self.metrics_variables, metric_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            keras_internals.loss_tracker(self).update_state(
                ops.where(finite > 0, losses, 0.0), sample_weight=finite * scalars["rows"]
            )
            metrics = keras_internals.compile_metrics(self)
            if metrics is not None:
                metrics.update_state(y, aux[ROWS]["y_pred"], w)
            applied = ops.cast(sound, "float32")
            self.grad_norm_tracker.update_state(ops.where(sound, norm, 0.0), sample_weight=applied)
            self.nonfinite_tracker.update_state(1.0 - applied)
            self.loss_scale_skip_tracker.update_state(0.0)
            for name, tracker in self.method_trackers().items():
                tracker.update_state(scalars[name])
            logs = self.get_metrics_result()
        values = []
        for ref, value in zip(self.metrics_variables, metric_vars):
            new = scope.get_current_value(ref)
            values.append(value if new is None else new)
        return logs, values

    def test_step(self, state: tuple, data: Any) -> tuple[dict[str, Any], tuple]:
        logs, state = super().test_step(state, data)
        return self.filter_train_only(logs), state


__all__ = ["ROWS", "SCALARS", "JaxAccumulatingTrainer", "MicroBatch"]
