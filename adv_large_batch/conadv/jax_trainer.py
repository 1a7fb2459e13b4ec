"""ConAdv on the JAX backend: the schedules of ``conadv/trainer.py`` in the JAX shell.

``ConAdv`` here is ``ConAdvMethod`` (knobs, logs, buffer, config) on a
``JaxAccumulatingTrainer``.  Per device, one step of each schedule (``_local_gradients``):

baseline  the clean rows alone (the shell's step)
disadv    adv = PGD(theta_t; B_t), then the update on [B_t; adv]
separate  adv = buffer[t mod tau] (made at step t - tau; DisAdv's attack for t < tau),
          the update on [B_t; adv]; beside it PGD(theta_t; B_t+tau) -> buffer[t mod tau]
shared    adv = buffer[0] (batch t, made at step t - 1; FGSM at theta_0 for t = 0), ONE
          forward/backward over [B_t+1; adv] -> the update's gradient and, from the
          clean rows' input gradient, the FGSM examples of B_t+1 -> buffer[0]

Each micro-batch's pass runs the network once over ``[clean; adversarial]`` with split
BatchNorm (clean rows through the main BN, adversarial rows through the auxiliary one,
each BN's moving statistics carried through the micro-batches by the shell); the attacks
are stateless calls through the auxiliary BN in training mode (the shared pass's FGSM
through the main BN), at the step's weights, as on TensorFlow.  PGD's random start of
micro-batch i is keyed by (seed, stream, step, its index in the global batch): P devices
draw what one device draws on the global batch (the values differ from TensorFlow's).

The buffer (``[tau, rows, ...]`` images and labels) is part of the trainer's state,
sharded by batch over the devices under ``keras.distribution.DataParallel`` (each device
holds its own rows), and checkpointed with the weights.  ``mixed_float16`` is refused (the
shell): use ``mixed_bfloat16``; ``attack_overflows`` is therefore always 0 here, and
``adv_time_s`` (a TensorFlow timer) is not logged.

Example (``KERAS_BACKEND=jax``; no TensorFlow needed):

```python
import os
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras, numpy as np
if keras.config.backend() == "jax":
    from adv_large_batch.conadv import ConAdv, ConAdvConfig
    from adv_large_batch.models.image_models import build_image_model

    network = build_image_model("cifar_resnet8", (28, 28, 1), num_classes=10, width=4)
    model = ConAdv(network, ConAdvConfig(method="disadv", eps=4), micro_batch_size=8)
    model.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.rand(32, 28, 28, 1).astype("float32")   # in [0, 1]
    model.fit(images, np.arange(32) % 10, batch_size=16, epochs=1, verbose=0)
```
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from adv_large_batch import keras_internals
from adv_large_batch.conadv import pgd
from adv_large_batch.conadv.method import LOGS, ConAdvMethod
from adv_large_batch.conadv.paired_keys import IMAGES, NEXT_IMAGES, NEXT_LABELS
from adv_large_batch.engine import randomness
from adv_large_batch.engine.jax_trainer import (
    MOVING,
    ROWS,
    SCALARS,
    JaxAccumulatingTrainer,
    MicroBatch,
    micro_batch_loop,
)
from adv_large_batch.models.split_batchnorm import split_bn_route

#: ``draw_key``'s ``extra`` of an attack's dropout (its pass; the update's is 0).
_ATTACK_PASS = 1


def mean_cross_entropy(y: Any, logits: Any) -> Any:
    """Mean sparse cross-entropy of logits (the attack loss when none is compiled)."""
    losses = keras.losses.sparse_categorical_crossentropy(y, ops.cast(logits, "float32"), True)
    return ops.mean(losses)


@keras.saving.register_keras_serializable(package="adv_large_batch")
class ConAdv(ConAdvMethod, JaxAccumulatingTrainer):
    """Baseline / DisAdv / ConAdv training of an image classifier on JAX (arguments:
    ``ConAdvMethod``; ``batch_size`` is the per-device batch).  Trains on images and
    labels (baseline, DisAdv) or on the paired elements of ``data/numpy_images`` (ConAdv
    with ``staleness >= 1``), every batch of ``batch_size`` rows per device."""

    def buffer_variable(self, name: str, shape: tuple[int, ...], dtype: str) -> keras.Variable:
        """The buffer over all devices (``[slots, rows per device x devices, ...]``),
        sharded by rows under data parallelism; a scalar is replicated."""
        import numpy as np

        mesh, axis = getattr(self.backend, "mesh", None), getattr(self.backend, "axis", None)
        layout = None
        if mesh is not None and len(shape) >= 2:
            shape = (shape[0], shape[1] * int(mesh.size), *shape[2:])
            spec = [None, axis, *([None] * (len(shape) - 2))]
            distribution = self.backend.distribution
            layout = keras.distribution.TensorLayout(spec, distribution.device_mesh)
        zeros = np.zeros(shape, dtype)
        return keras.Variable(zeros, trainable=False, name=name, layout=layout)

    def device_variables(self) -> list[Any]:
        return [self.buffer_images, self.buffer_labels] if self.config.buffered else []

    def network_inputs(self, x: Any, y: Any = None) -> tuple[Any, Any]:
        """``TrainerCommon.network_inputs``, then the images checked (floats in [0, 1])."""
        x, y = super().network_inputs(x, y)
        self.check_images(x)
        return x, y

    def method_trackers(self) -> dict[str, Any]:
        if not self.config.adversarial:
            return {}
        trackers = {name: getattr(self, attribute) for name, attribute in LOGS.items()}
        if self.config.buffered:
            trackers["stale_fraction"] = self.stale_tracker
        return trackers

    # ---- the attacks -----------------------------------------------------------------
    def attack_loss(self, y: Any, logits: Any) -> Any:
        """The compiled task loss (labels as the target), without regularisers."""
        compiled = keras_internals.compile_loss(self)
        return compiled(y, logits) if compiled is not None else mean_cross_entropy(y, logits)

    def attack(self, weights: tuple, x: Any, y: Any, key: Any) -> Any:
        """PGD examples of one micro-batch: ``weights`` (trainable, non-trainable), the
        auxiliary BN in training mode, nothing of the state updated."""
        trainable, non_trainable = weights
        cfg = self.config
        dropout = randomness.jax_draw_key(self._seed, randomness.DROPOUT, key[0], key[1])

        def loss_fn(x_in: Any) -> Any:
            with self.stateless(trainable, non_trainable, dropout):
                with split_bn_route(self.network, "aux"):
                    logits = self.network(x_in, training=True)
                return self.attack_loss(y, logits)

        return pgd.pgd_attack(
            loss_fn, x, cfg.eps_unit, cfg.step_unit, key, cfg.steps, cfg.random_init
        )

    def adversarial_batch(
        self, weights: tuple, x: Any, y: Any, clock: tuple, slot: Any, stream: int
    ) -> Any:
        """PGD examples of this device's batch, one micro-batch at a time; micro-batch i's
        random start keyed by (seed, ``stream``, step, its index in the global batch)."""

        def one(xi: Any, yi: Any, micro: Any) -> Any:
            key = randomness.jax_draw_key(self._seed, stream, clock[0], micro)
            return self.attack(weights, xi, yi, key)

        return self.per_micro_batch(one, x, y, slot)

    def per_micro_batch(self, fn: Any, x: Any, y: Any, slot: Any) -> Any:
        """``fn(x_i, y_i, global micro-batch index) -> rows`` over this device's
        micro-batches, one at a time (BatchNorm's batch statistics are each micro-batch's,
        as in the update's passes), the rows in order."""
        import jax.numpy as jnp

        rows = int(x.shape[0])
        m = min(self.micro_batch_size or rows, rows)
        n = rows // m
        xs, ys = x.reshape((n, m, *x.shape[1:])), y.reshape((n, m, *y.shape[1:]))

        def one(carry: None, args: tuple) -> tuple[None, Any]:
            i, xi, yi = args
            return carry, fn(xi, yi, slot * n + i)

        _, out = micro_batch_loop(one, None, (jnp.arange(n), xs, ys), n)
        return out.reshape(x.shape)

    def fgsm(self, weights: tuple, x: Any, y: Any, slot: Any) -> Any:
        """The shared pass's rule at step 0: FGSM from the clean point through the main BN
        in training mode (stateless), projected to the ball and to [0, 1], micro-batch by
        micro-batch (BN statistics of each micro-batch, as at later steps)."""
        trainable, non_trainable = weights
        cfg = self.config

        def one(xi: Any, yi: Any, micro: Any) -> Any:
            def loss_fn(x_in: Any) -> Any:
                with self.stateless(trainable, non_trainable):
                    with split_bn_route(self.network, "main"):
                        logits = self.network(x_in, training=True)
                    return self.attack_loss(yi, logits)

            grad = pgd.input_gradient(loss_fn, ops.stop_gradient(xi))
            return pgd.shared_pass_examples(xi, grad, cfg.eps_unit, cfg.step_unit)

        return self.per_micro_batch(one, x, y, slot)

    # ---- the step --------------------------------------------------------------------
    def _local_gradients(
        self, trainable: list[Any], non_trainable: list[Any], data: tuple, clock: tuple, slot: Any
    ) -> tuple[list[Any], dict[str, Any], tuple, list[Any]]:
        """One device's step of the schedule (module docstring): the adversarial rows,
        the accumulated gradient over ``[clean; adversarial]``, the buffer written."""
        import jax.numpy as jnp

        x, y, w = data
        cfg = self.config
        if not cfg.adversarial:
            images = x[IMAGES] if isinstance(x, dict) else x
            return super()._local_gradients(trainable, non_trainable, (images, y, w), clock, slot)
        if w is not None:
            raise ValueError("ConAdv does not support sample weights")
        weights = (trainable, non_trainable)
        state = list(non_trainable)
        ready = jnp.bool_(True)
        if not cfg.buffered:
            clean, y_clean = x, y
            adv = self.adversarial_batch(weights, x, y, clock, slot, randomness.CONADV_CURRENT)
            parts = (clean, adv, clean), (y_clean, y)
        else:
            parts, ready = self._buffered_parts(weights, state, x, y, clock, slot)
        grads, aux, moving = self.accumulate(trainable, state, (*parts, None), clock, slot)
        if cfg.shared:  # the examples of batch t + 1, from this step's own backward
            images_at, labels_at = self._buffer_positions()
            state[images_at] = aux[ROWS].pop("next_adversarial")[None]
            state[labels_at] = ops.cast(parts[1][0], "int32")[None]
        if cfg.buffered:
            scalars = aux[SCALARS]
            scalars["stale_fraction"] = jnp.full_like(scalars["loss"], ready, "float32")
        return grads, aux, (parts[1][0], None), self.with_moving(state, moving)

    def _buffer_positions(self) -> tuple[int, int]:
        variables = self.non_trainable_variables
        return self._position(self.buffer_images, variables), self._position(
            self.buffer_labels, variables
        )

    def _buffered_parts(
        self, weights: tuple, state: list[Any], x: dict, y: Any, clock: tuple, slot: Any
    ) -> tuple[tuple, Any]:
        """ConAdv with a buffer: ``((clean, adversarial, origin), (y_clean, y_adv))`` of
        this step and whether the buffer was ready; ``state`` gets the separate schedule's
        next batch (the shared pass writes its own after the backward)."""
        import jax

        cfg = self.config
        step = clock[0]
        images_at, labels_at = self._buffer_positions()
        images = x[IMAGES]
        if cfg.shared:
            ready = step >= 1

            def fresh_shared(_: Any) -> tuple[Any, Any]:
                return self.fgsm(weights, images, y, slot), ops.cast(y, "int32")

            def buffered_shared(_: Any) -> tuple[Any, Any]:
                return state[images_at][0], state[labels_at][0]

            adv, y_adv = jax.lax.cond(ready, buffered_shared, fresh_shared, None)
            clean, y_clean = x[NEXT_IMAGES], ops.cast(x[NEXT_LABELS], y.dtype)
            return ((clean, adv, images), (y_clean, ops.cast(y_adv, y.dtype))), ready
        index = step % cfg.staleness
        ready = step >= cfg.staleness

        def fresh(_: Any) -> tuple[Any, Any]:  # the first tau steps: DisAdv
            stream = randomness.CONADV_CURRENT
            adv = self.adversarial_batch(weights, images, y, clock, slot, stream)
            return adv, ops.cast(y, "int32")

        def buffered(_: Any) -> tuple[Any, Any]:
            return state[images_at][index], state[labels_at][index]

        adv, y_adv = jax.lax.cond(ready, buffered, fresh, None)
        future = self.adversarial_batch(
            weights, x[NEXT_IMAGES], x[NEXT_LABELS], clock, slot, randomness.CONADV_FUTURE
        )
        state[images_at] = state[images_at].at[index].set(future)
        state[labels_at] = state[labels_at].at[index].set(ops.cast(x[NEXT_LABELS], "int32"))
        return ((images, adv, images), (y, ops.cast(y_adv, y.dtype))), ready

    def micro_batch_loss(
        self,
        trainable: list[Any],
        non_trainable: list[Any],
        x: Any,
        y: Any,
        w: Any,
        where: MicroBatch,
    ) -> tuple[Any, dict[str, dict[str, Any]]]:
        """eq. (2) / (4): the mean of the clean and the adversarial rows' losses, one
        forward over ``[clean; adversarial]`` with split BN; ``x = (clean, adversarial,
        origin)`` (origin: the images the adversarial rows perturb)."""
        if not self.config.adversarial:
            return super().micro_batch_loss(trainable, non_trainable, x, y, w, where)
        (clean, adv, origin), (y_clean, y_adv) = x, y
        m = int(clean.shape[0])
        with self.stateless(trainable, non_trainable, self.dropout_key(where)) as scope:
            with split_bn_route(self.network, "split"):
                logits = self.network(ops.concatenate([clean, adv], axis=0), training=True)
            clean_logits, adv_logits = logits[:m], logits[m:]
            clean_loss = self.task_loss(clean, y_clean, clean_logits, w)
            adv_loss = self.task_loss(adv, y_adv, adv_logits, w)
        loss = 0.5 * (clean_loss + adv_loss)  # eq. (2) / (4)
        hits = ops.equal(ops.argmax(adv_logits, axis=-1), ops.cast(y_adv, "int32"))
        scalars = {
            "clean_loss": clean_loss,
            "adv_loss": adv_loss,
            "adv_accuracy": ops.mean(ops.cast(hits, "float32")),
            "perturbation_linf_px": pgd.linf_distance(adv, origin) * pgd.PIXEL_SCALE,
            "attack_overflows": ops.zeros((), "float32"),
        }
        aux = {ROWS: {"y_pred": clean_logits}, SCALARS: scalars}
        return loss, {**aux, MOVING: self.moved(scope, non_trainable)}

    def loss_and_gradients(
        self,
        trainable: list[Any],
        non_trainable: list[Any],
        x: Any,
        y: Any,
        w: Any,
        where: MicroBatch,
    ) -> tuple[Any, dict[str, Any], list[Any]]:
        """The shell's, and for the shared pass also the clean rows' input gradient from
        the same backward: their FGSM examples go out as the rows ``next_adversarial``."""
        if not self.config.shared:
            return super().loss_and_gradients(trainable, non_trainable, x, y, w, where)
        import jax

        clean, adv, origin = x

        def loss_of(trainable: list[Any], clean: Any) -> tuple[Any, dict[str, Any]]:
            return self.micro_batch_loss(
                trainable, non_trainable, (clean, adv, origin), y, w, where
            )

        grad_fn = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)
        (loss, aux), (grads, input_grad) = grad_fn(trainable, clean)
        cfg = self.config
        examples = pgd.shared_pass_examples(clean, input_grad, cfg.eps_unit, cfg.step_unit)
        aux[ROWS] = {**aux[ROWS], "next_adversarial": examples}
        return loss, aux, grads


__all__ = ["ConAdv", "mean_cross_entropy"]
