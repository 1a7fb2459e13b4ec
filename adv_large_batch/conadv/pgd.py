"""The adversarial example of ConAdv: PGD with a random start in the l-inf ball.

ConAdv §3.2-3.3, equations (3) and (5): ``x_hat = x + alpha * grad_x L(theta; x, y)``
from one gradient of the task loss with the *labels* as the target, and §4.1:
"we always use 1-step PGD attack with random initialization".  The radius and
step are given in pixel units out of 255, as the perturbation ``p`` of Table 4.
Here, on images scaled to ``[0, 1]``:

    eps, alpha = p_eps / 255, p_step / 255
    x_0   = clip(x + U(-eps, eps), 0, 1)                     random start
    x_k+1 = clip(clip(x_k + alpha * sign(grad_x L(x_k)),     ascent step
                      x - eps, x + eps), 0, 1)               projection

The ascent direction is ``sign(grad)``, the steepest ascent under the l-inf
constraint (FGSM / PGD as in Madry et al. [21], AdvProp [34] and FastAdv
[33]); the paper writes the raw gradient in eq. (3) but measures the
perturbation in l-inf pixel units, which only the sign step respects.

A non-finite gradient entry (a ``mixed_float16`` overflow of the loss-scaled input
gradient) gives no direction: that pixel takes no step (it keeps its start value, the
clean pixel for FGSM from the clean point), so neither ``sign`` nor the projection ever
sees NaN and the examples stay finite.  An inf is treated the same: after an overflow
of a partial sum its sign need not be the true one.  ``pgd_attack_with_overflow`` and
``nonfinite_entries`` count such entries, so the caller can lower its loss scale.

Pure TensorFlow functions: the model enters only through ``loss_fn(x) ->
scalar``, so the caller decides which weights and which BatchNorm statistics
the attack sees (``ConAdv`` uses a stateless call of the network with the
auxiliary BN in training mode; see ``adv_large_batch.conadv``).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from adv_large_batch.models.inputs import IMAGE_RANGE

PIXEL_SCALE = 255.0
VALUE_RANGE = IMAGE_RANGE  # the images' range (models/inputs.py)


def pixels_to_unit(pixels: float) -> float:
    """A distance in pixel units out of 255 as a distance on ``[0, 1]`` images."""
    return float(pixels) / PIXEL_SCALE


def random_start(
    x: tf.Tensor,
    eps: float,
    seed: tf.Tensor,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> tf.Tensor:
    """``x`` plus uniform noise in ``[-eps, eps]``, clipped to ``value_range``.

    ``seed`` is a shape-[2] integer tensor (stateless random op).
    """
    noise = tf.random.stateless_uniform(tf.shape(x), seed, -eps, eps, dtype=x.dtype)
    return tf.clip_by_value(x + noise, value_range[0], value_range[1])


def project(
    x_adv: tf.Tensor,
    x: tf.Tensor,
    eps: float,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> tf.Tensor:
    """Nearest point of the l-inf ball of radius ``eps`` around ``x`` inside ``value_range``."""
    x_adv = tf.clip_by_value(x_adv, x - eps, x + eps)
    return tf.clip_by_value(x_adv, value_range[0], value_range[1])


def finite_or_zero(grad: tf.Tensor) -> tf.Tensor:
    """``grad`` with its non-finite entries (inf, NaN) replaced by 0: no direction there."""
    return tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))


def nonfinite_entries(grad: tf.Tensor, per_row: bool = False) -> tf.Tensor:
    """How many entries of ``grad`` are not finite (float32): in all, or one count per row."""
    bad = tf.cast(tf.logical_not(tf.math.is_finite(grad)), tf.float32)
    if per_row:
        return tf.reduce_sum(tf.reshape(bad, [tf.shape(bad)[0], -1]), axis=1)
    return tf.reduce_sum(bad)


def ascent_step(x_adv: tf.Tensor, grad: tf.Tensor, step: float) -> tf.Tensor:
    """One l-inf steepest-ascent step: ``x_adv + step * sign(grad)``; an entry whose
    gradient is not finite does not move (``finite_or_zero``)."""
    return x_adv + step * tf.sign(tf.cast(finite_or_zero(grad), x_adv.dtype))


def input_gradient(loss_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """``grad_x loss_fn(x)``; no gradient reaches the weights (the tape watches only x)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        loss = loss_fn(x)
    return tape.gradient(loss, x)


def pgd_attack(
    loss_fn: Callable[[tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    eps: float,
    step: float,
    seed: tf.Tensor,
    steps: int = 1,
    random_init: bool = True,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> tf.Tensor:
    """PGD-``steps`` adversarial examples of ``x`` for the loss ``loss_fn`` (to be increased).

    ``eps`` and ``step`` are in the units of ``x`` (use ``pixels_to_unit``).  The
    result lies in the ball and in ``value_range`` and carries no gradient; a pixel
    whose gradient is not finite does not move at that step.
    """
    return pgd_attack_with_overflow(loss_fn, x, eps, step, seed, steps, random_init, value_range)[0]


def pgd_attack_with_overflow(
    loss_fn: Callable[[tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    eps: float,
    step: float,
    seed: tf.Tensor,
    steps: int = 1,
    random_init: bool = True,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(pgd_attack(...), n)``: ``n`` (float32) counts the non-finite input-gradient
    entries over all steps (0 when nothing overflowed)."""
    x = tf.stop_gradient(x)
    x_adv = random_start(x, eps, seed, value_range) if random_init else x
    nonfinite = tf.constant(0.0)
    for _ in range(steps):
        grad = input_gradient(loss_fn, x_adv)
        nonfinite += nonfinite_entries(grad)
        x_adv = project(ascent_step(x_adv, grad, step), x, eps, value_range)
    return tf.stop_gradient(x_adv), nonfinite


def linf_distance(x_adv: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """The largest absolute pixel difference over the batch (in the units of ``x``)."""
    return tf.reduce_max(tf.abs(tf.cast(x_adv, tf.float32) - tf.cast(x, tf.float32)))


def shared_pass_examples(x: tf.Tensor, input_grad: tf.Tensor, eps: float, step: float) -> tf.Tensor:
    """FGSM from the clean point: ``x + step sign(g)`` projected to the eps ball around
    ``x`` and to [0, 1] (no gradient flows through the result); where ``g`` is not
    finite the clean pixel is kept."""
    x = tf.stop_gradient(x)
    return tf.stop_gradient(project(ascent_step(x, input_grad, step), x, eps))


__all__ = [
    "PIXEL_SCALE",
    "VALUE_RANGE",
    "ascent_step",
    "finite_or_zero",
    "input_gradient",
    "linf_distance",
    "nonfinite_entries",
    "pgd_attack",
    "pgd_attack_with_overflow",
    "pixels_to_unit",
    "project",
    "random_start",
    "shared_pass_examples",
]
