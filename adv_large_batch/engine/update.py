"""One optimizer step, or none: the decision from all-reduced values, the same everywhere.

A step is applied when the loss of every micro-batch on every worker and replica was
finite and the (reduced) gradient is finite.  Under ``mixed_float16`` (Keras'
``LossScaleOptimizer``) a gradient overflow with a finite loss is the loss scale's
business: the optimizer skips the step and halves its scale (``skipped_by_scale``); only
a non-finite loss, or an overflow at a scale that has collapsed to <= 1, is a non-finite
step (``diverged``), which never reaches the optimizer.

An overflow elsewhere in a step's loss-scaled backward passes (ConAdv's attack: the
input gradient of a loss multiplied by the scale) is folded into the gradients before
they are reduced (``fold_overflow``), so the loss scale sees it like any overflow: the
step is skipped and the scale halved, everywhere alike, and it is not a non-finite step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from adv_large_batch import keras_internals


def all_finite(tensors: list[tf.Tensor]) -> tf.Tensor:
    """True when every entry of every tensor is finite."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def uses_dynamic_loss_scale(optimizer: Any) -> bool:
    """True for Keras' ``LossScaleOptimizer`` with a dynamic scale (``mixed_float16``)."""
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and bool(
        getattr(optimizer, "dynamic", True)
    )


@dataclasses.dataclass
class Decision:
    """What became of one step (scalars of the traced step)."""

    applied: tf.Tensor  # the update reached the weights
    diverged: tf.Tensor  # a non-finite step (counted in ``nonfinite_steps``)
    skipped_by_scale: tf.Tensor  # a mixed_float16 overflow the loss scale absorbed
    grad_norm: tf.Tensor  # l2 norm of the reduced gradient, in loss units (0: not applied)


def fold_overflow(optimizer: Any, grads: list[tf.Tensor], overflowed: Any) -> list[tf.Tensor]:
    """``grads``, made non-finite where ``overflowed`` (a local scalar bool) is True and the
    optimizer has a dynamic loss scale; otherwise unchanged.

    Call before the gradients are reduced: the NaN reaches every worker and replica with
    the reduction, and ``apply_if_sound`` then hands the step to the
    ``LossScaleOptimizer``, which skips it and halves its scale (its own overflow path,
    through the public ``apply``); with a finite loss this is ``skipped_by_scale``, not
    ``diverged`` (except at a collapsed scale, as for any overflow).  One NaN is added to
    the smallest gradient tensor, so the cost is one small elementwise op.
    """
    if not grads or not uses_dynamic_loss_scale(optimizer):
        return list(grads)
    grads = list(grads)
    sizes = [g.shape.num_elements() for g in grads]
    i = min(range(len(grads)), key=lambda k: sizes[k] if sizes[k] is not None else float("inf"))
    poison = tf.where(tf.cast(overflowed, tf.bool), float("nan"), 0.0)
    grads[i] = grads[i] + tf.cast(poison, grads[i].dtype)
    return grads


def apply_if_sound(
    optimizer: Any, grads: list[tf.Tensor], variables: list[Any], bad_losses: tf.Tensor
) -> Decision:
    """Apply the reduced ``grads`` unless the step is unsound (see the module docstring).

    ``bad_losses`` is the all-reduced count of micro-batches whose loss was not finite.
    """
    loss_ok = tf.equal(bad_losses, 0.0)
    grads_ok = all_finite(grads)
    if uses_dynamic_loss_scale(optimizer):
        scale = tf.cast(optimizer.scale_loss(tf.constant(1.0)), tf.float32)
        overflow = tf.logical_and(loss_ok, tf.logical_not(grads_ok))
        collapsed = tf.logical_and(overflow, scale <= 1.0)
        diverged = tf.logical_or(tf.logical_not(loss_ok), collapsed)
        # A finite loss goes to the LossScaleOptimizer, which skips an overflowing step
        # itself and halves its scale; a non-finite loss never reaches it.
        apply_if(optimizer, grads, variables, loss_ok)
        skipped_by_scale = tf.logical_and(overflow, tf.logical_not(collapsed))
    else:
        scale = tf.constant(1.0)
        diverged = tf.logical_not(tf.logical_and(loss_ok, grads_ok))
        apply_if(optimizer, grads, variables, tf.logical_not(diverged))
        skipped_by_scale = tf.constant(False)
    applied = tf.logical_and(loss_ok, grads_ok)
    # 0 for a step not applied: a weight-0 NaN would still make the epoch's mean NaN.
    grad_norm = tf.where(applied, tf.linalg.global_norm(grads) / scale, 0.0)
    return Decision(applied, diverged, skipped_by_scale, grad_norm)


def apply_if(
    optimizer: Any, grads: list[tf.Tensor], variables: list[Any], apply: tf.Tensor
) -> None:
    """``optimizer.apply(grads)`` when ``apply`` (the same on every worker/replica).

    Outside tf.distribute (and where a strategy needs no merge call) this is a
    ``tf.cond`` in the step.  Otherwise (MirroredStrategy) the optimizer's apply
    enters cross-replica context through ``merge_call``, which a ``tf.cond`` in
    replica context may not contain; so, as Keras' ``LossScaleOptimizer`` does, the
    cond runs in cross-replica context and its branch applies on every replica.
    A skipped step leaves weights, slots and ``iterations`` untouched.
    """
    if not optimizer.built:  # variables cannot be created inside the cond
        optimizer.build(variables)

    def update() -> tf.Tensor:
        optimizer.apply(grads, variables)
        return tf.constant(True)

    def skip() -> tf.Tensor:
        return tf.constant(False)

    if keras_internals.strategy_supports_no_merge_call():
        tf.cond(apply, update, skip)
        return

    def cross_replica(strategy: Any, grads: Any, apply: Any) -> tf.Tensor:
        decided = strategy.experimental_local_results(apply)[0]  # equal on all replicas

        def update_every_replica() -> tf.Tensor:
            strategy.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))
            return tf.constant(True)

        return tf.cond(decided, update_every_replica, skip)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(grads, apply))


__all__ = [
    "Decision",
    "all_finite",
    "apply_if",
    "apply_if_sound",
    "fold_overflow",
    "uses_dynamic_loss_scale",
]
