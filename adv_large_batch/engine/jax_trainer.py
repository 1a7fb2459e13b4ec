"""The JAX trainer shell: micro-batch accumulation -> one gradient reduction -> one step.

The JAX counterpart of ``AccumulatingTrainer`` (``engine/trainer.py``), built on Keras 3's
stateless JAX step ``train_step(state, data) -> (logs, state)``, which Keras compiles with
``jax.jit`` (and, under ``keras.distribution.DataParallel``, with the variables replicated
and the batch split over the devices):

1. each device sorts/prepares its own rows (``prepare_batch``) and splits them into
   micro-batches of ``micro_batch_size`` rows; ``jax.lax.scan`` runs them one after the
   other in one compiled program (only one micro-batch's activations alive at a time;
   unrolled on a CPU, whose loop bodies are slow, up to 8 micro-batches: ``micro_batch_loop``),
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

Moving statistics (BatchNormalization's moving mean and variance) follow the micro-batches
one after the other, as on TensorFlow (each training forward pass updates them; the scan
carries them); under data parallelism each device updates its own from its rows and the
step ends with their mean over the devices (TensorFlow under Horovod keeps each worker's
own; PyTorch DDP broadcasts rank 0's).  A step that is not applied keeps them too.
Variables a method keeps per device (``device_variables``, e.g. ConAdv's buffer of
adversarial batches) are sharded by batch over the devices: each device holds its rows.

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

#: Keys of ``micro_batch_loss``'s aux: per-row outputs, per-micro-batch scalars, and the
#: moving statistics after the micro-batch's forward passes (``moved``; optional).
ROWS, SCALARS, MOVING = "rows", "scalars", "moving"


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


#: The most micro-batches a step unrolls on a CPU; above it the loop stays a loop.
CPU_UNROLL_LIMIT = 8


def unroll_for(length: int, platform: str) -> int:
    """How many of ``length`` micro-batches ``micro_batch_loop`` unrolls on ``platform``
    (``jax.default_backend()``): all of them on a CPU up to ``CPU_UNROLL_LIMIT``, else 1.

    An unrolled program's scratch memory grows with the count: XLA:CPU keeps each unrolled
    micro-batch's buffers (a two-layer MLP's gradient over 32 micro-batches: 3.0 MiB of
    temporaries as a loop, 10.5 unrolling 4, 20.5 unrolling 8, 78.5 unrolling all 32:
    ``benchmarks/unroll_memory.py``), and
    the bundled MiniLM's ScaLA step at batch 1,024 = 32 x 32 rows, fully unrolled, was
    killed for memory at 20.8 GB on a 23 GB host.

    ```python
    from adv_large_batch.engine.jax_trainer import unroll_for

    assert (unroll_for(2, "cpu"), unroll_for(32, "cpu"), unroll_for(2, "gpu")) == (2, 1, 1)
    ```
    """
    return length if platform == "cpu" and 1 <= length <= CPU_UNROLL_LIMIT else 1


def micro_batch_loop(body: Any, carry: Any, xs: Any, length: int) -> tuple[Any, Any]:
    """``jax.lax.scan(body, carry, xs)`` over ``length`` micro-batches, unrolled on a CPU
    when there are at most ``CPU_UNROLL_LIMIT`` of them (``unroll_for``).

    XLA:CPU runs convolutions inside a loop body many times slower than the same ops
    unrolled (jax-ml/jax issue 12868: four 3x3 convolutions forward and backward, 0.26 s
    as straight code, 6.6 s in a scan of 2, 9.6 s in a scan of 1, 0.27 s unrolled;
    ``benchmarks/bench_image_backends.py``); but unrolled, every micro-batch keeps its own
    buffers, so many micro-batches stay a loop (slower convolutions, one micro-batch's
    memory).  On GPUs and TPUs the loop keeps one micro-batch's activations alive at a
    time, so it stays a loop there."""
    import jax

    unroll = unroll_for(length, jax.default_backend())
    return jax.lax.scan(body, carry, xs, length=length, unroll=unroll)


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

    def moving_positions(self) -> list[int]:
        """Positions in ``non_trainable_variables`` of the statistics a training forward
        pass updates: every ``BatchNormalization``'s moving mean and variance."""
        if not hasattr(self, "_moving_slots"):
            layers = keras_internals.flatten_layers(self.network, include_self=True, recursive=True)
            slots = [
                self._position(v, self.non_trainable_variables)
                for layer in layers
                if isinstance(layer, keras.layers.BatchNormalization)
                for v in (layer.moving_mean, layer.moving_variance)
            ]
            object.__setattr__(self, "_moving_slots", slots)  # not tracked by Keras
        return self._moving_slots  # type: ignore[attr-defined]

    def moved(self, scope: Any, non_trainable: list[Any]) -> list[Any]:
        """The moving statistics (``moving_positions``) after the forward passes run in
        ``scope`` (a ``stateless`` scope); unchanged ones as in ``non_trainable``."""
        values = []
        for pos in self.moving_positions():
            new = scope.get_current_value(self.non_trainable_variables[pos])
            old = non_trainable[pos]
            values.append(old if new is None else ops.cast(new, old.dtype))
        return values

    def with_moving(self, non_trainable: list[Any], moving: list[Any]) -> list[Any]:
        """``non_trainable`` with the moving statistics replaced by ``moving``."""
        values = list(non_trainable)
        for pos, value in zip(self.moving_positions(), moving):
            values[pos] = value
        return values

    def device_variables(self) -> list[Any]:
        """Non-trainable variables each device keeps for its own rows, sharded by batch
        (axis 1: ``[slots, rows, ...]``) under data parallelism (none here)."""
        return []

    def _seed_positions(self) -> list[int]:
        if not hasattr(self, "_seed_slots"):
            generators = randomness.seed_generators(self.network)
            states = [self._position(g.state, self.non_trainable_variables) for g in generators]
            object.__setattr__(self, "_seed_slots", states)  # not tracked by Keras
        return self._seed_slots  # type: ignore[attr-defined]

    def stateless(self, trainable: list[Any], non_trainable: list[Any], key: Any = None) -> Any:
        """A ``keras.StatelessScope`` where the model's variables read ``trainable`` and
        ``non_trainable``, the dropout generators set from ``key`` (None: as given).  The
        per-device variables (``device_variables``: one device's rows inside
        ``shard_map``) are left out: the network never reads them."""
        values = list(non_trainable)
        positions = self._seed_positions()
        if key is not None and positions:
            for pos, state in zip(positions, randomness.jax_generator_states(key, len(positions))):
                values[pos] = state.astype(values[pos].dtype)
        mapping = list(zip(self.trainable_variables, trainable))
        per_device = [id(v) for v in self.device_variables()]
        mapping += [
            (v, value)
            for v, value in zip(self.non_trainable_variables, values)
            if id(v) not in per_device
        ]
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
        with self.stateless(trainable, non_trainable, self.dropout_key(where)) as scope:
            y_pred = self.network(x, training=True)
            loss = self.task_loss(x, y, y_pred, w)
        moving = self.moved(scope, non_trainable)
        return loss, {ROWS: {"y_pred": y_pred}, SCALARS: {}, MOVING: moving}

    def loss_and_gradients(
        self,
        trainable: list[Any],
        non_trainable: list[Any],
        x: Any,
        y: Any,
        w: Any,
        where: MicroBatch,
    ) -> tuple[Any, dict[str, Any], list[Any]]:
        """``(loss, aux, gradients)`` of one micro-batch: ``jax.value_and_grad`` of
        ``micro_batch_loss`` with respect to ``trainable``."""
        import jax

        grad_fn = jax.value_and_grad(self.micro_batch_loss, has_aux=True)
        (loss, aux), grads = grad_fn(trainable, non_trainable, x, y, w, where)
        return loss, aux, grads

    def method_trackers(self) -> dict[str, Any]:
        """``{scalar name: tracker}``: the per-micro-batch scalars of ``micro_batch_loss``'s
        aux, each tracked as a mean over the micro-batches (none here)."""
        return {}

    # ---- the step ------------------------------------------------------------------
    def _local_gradients(
        self, trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple, slot: Any
    ) -> tuple[list[Any], dict[str, Any], tuple, list[Any]]:
        """``(gradient, aux, (y, w), non_trainable)`` of this device's rows: the mean-loss
        gradient over ``prepare_batch``'s rows, accumulated micro-batch by micro-batch."""
        data = self.prepare_batch(*data)
        grads, aux, moving = self.accumulate(trainable, non_trainable, data, clock, slot)
        return grads, aux, data[1:], self.with_moving(non_trainable, moving)

    def accumulate(
        self, trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple, slot: Any
    ) -> tuple[list[Any], dict[str, Any], list[Any]]:
        """``(gradient, aux, moving statistics)`` of the mean loss over ``data``'s rows:
        micro-batches of ``micro_batch_size`` in one ``jax.lax.scan``, weighted by rows."""
        import jax.numpy as jnp

        step, iterations = clock
        rows = _rows_of(data[0])
        m = min(self.micro_batch_size or rows, rows)
        full, rest = divmod(rows, m)
        count = full + (1 if rest else 0)

        def one(part: tuple, index: Any, size: int, moving: list[Any]) -> tuple:
            state = self.with_moving(non_trainable, moving)
            where = MicroBatch(step, slot * count + index, iterations, state)
            loss, aux, grads = self.loss_and_gradients(trainable, state, *part, where)
            moving = aux.pop(MOVING, moving)
            aux[SCALARS] = {**aux[SCALARS], "loss": loss, "rows": jnp.float32(size)}
            return [g * (size / rows) for g in grads], aux, moving

        def body(carry: tuple, args: tuple) -> tuple[tuple, dict[str, Any]]:
            total, moving = carry
            grads, aux, moving = one(args[0], args[1], m, moving)
            return ([t + g for t, g in zip(total, grads)], moving), aux

        head = _tree_map(lambda t: t[: full * m].reshape((full, m, *t.shape[1:])), data)
        zeros = [jnp.zeros_like(v) for v in trainable]  # varying like the gradients
        moving = [non_trainable[p] for p in self.moving_positions()]
        (total, moving), aux = micro_batch_loop(
            body, (zeros, moving), (head, jnp.arange(full)), full
        )
        aux[ROWS] = _tree_map(lambda t: t.reshape((full * m, *t.shape[2:])), aux[ROWS])
        if rest:
            tail = _tree_map(lambda t: t[full * m :], data)
            grads, last, moving = one(tail, full, rest, moving)
            total = [t + g for t, g in zip(total, grads)]
            aux = _tree_map(
                lambda a, b: jnp.concatenate([a, b if a.ndim == b.ndim else b[None]]), aux, last
            )
        return total, aux, moving

    def _gradients(
        self, trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple
    ) -> tuple[list[Any], dict[str, Any], tuple, list[Any]]:
        """The reduced gradient of the global batch: per device, then one ``pmean`` (and
        the mean of the devices' moving statistics)."""
        import jax
        from jax.sharding import PartitionSpec

        mesh, axis = getattr(self.backend, "mesh", None), getattr(self.backend, "axis", None)
        if mesh is None or mesh.size == 1:
            return self._local_gradients(trainable, non_trainable, data, clock, 0)
        moving = self.moving_positions()

        def local(trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple):
            # Differentiating a replicated value inside shard_map makes JAX sum its gradient
            # over the devices at once (in every micro-batch); as a per-device ("varying")
            # value its gradient stays local until the one pmean below.  The moving
            # statistics, updated from each device's rows, vary too until their mean.
            trainable = _varying(trainable, axis)
            non_trainable = list(non_trainable)
            for p in moving:
                non_trainable[p] = _varying(non_trainable[p], axis)
            slot = jax.lax.axis_index(axis)
            grads, aux, rest, state = self._local_gradients(
                trainable, non_trainable, data, clock, slot
            )
            state = list(state)
            for p in moving:
                state[p] = jax.lax.pmean(state[p], axis)
            return jax.lax.pmean(grads, axis), aux, rest, state

        split, same = PartitionSpec(axis), PartitionSpec()
        per_device = {
            self._position(v, self.non_trainable_variables) for v in self.device_variables()
        }
        state_specs = [
            PartitionSpec(None, axis) if i in per_device else same
            for i in range(len(non_trainable))
        ]
        data_specs = tuple(None if d is None else split for d in data)
        sharded = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(same, state_specs, data_specs, same),
            out_specs=(same, split, split, state_specs),
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
        state_in = non_trainable
        x, y, w = keras.utils.unpack_x_y_sample_weight(data)
        step = self.value_of(self.batches_seen, non_trainable)
        iterations = optimizer_vars[
            self._position(self.optimizer.iterations, self.optimizer.variables)
        ]
        grads, aux, (y, w), updated = self._gradients(
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
        # A step that is not applied leaves the moving statistics too; the rest of the
        # state (e.g. a method's per-device buffer) is the step's.
        non_trainable = list(updated)
        for p in self.moving_positions():
            non_trainable[p] = jnp.where(sound, updated[p], state_in[p])
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
        """Keras' evaluation step, its loss averaged over the rows' weights.

        A batch split over the devices of a job carries weight-0 padding rows
        (``data.eval_shards``).  Keras' loss (``sum_over_batch_size``) divides the
        weighted sum by every row and its loss tracker counts every row, so ``val_loss``
        would depend on the padding, i.e. on the device count; here the tracker gets
        ``sum(w l) / sum(w)`` weighted by ``sum(w)``, the same on any number of devices
        (and Keras' value where no weights are given).  Metrics take the weights as given.
        """
        trainable, non_trainable, metric_vars = state
        x, y, w = keras.utils.unpack_x_y_sample_weight(data)
        _, (loss, y_pred, non_trainable, metric_vars) = self.compute_loss_and_updates(
            trainable, non_trainable, metric_vars, x, y, w, training=False
        )
        rows = ops.cast(ops.shape(keras.tree.flatten(x)[0])[0], "float32")
        weight = rows if w is None else ops.sum(ops.cast(w, "float32"))
        mapping = list(zip(self.metrics_variables, metric_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            keras_internals.loss_tracker(self).update_state(
                ops.divide_no_nan(loss * rows, weight), sample_weight=weight
            )
            metrics = keras_internals.compile_metrics(self)
            if metrics is not None:
                metrics.update_state(y, y_pred, w)
            logs = self.get_metrics_result()
        values = []
        for ref, value in zip(self.metrics_variables, metric_vars):
            new = scope.get_current_value(ref)
            values.append(value if new is None else new)
        return self.filter_train_only(logs), (trainable, non_trainable, values)


__all__ = [
    "CPU_UNROLL_LIMIT",
    "MOVING",
    "ROWS",
    "SCALARS",
    "JaxAccumulatingTrainer",
    "MicroBatch",
    "micro_batch_loop",
    "unroll_for",
]
