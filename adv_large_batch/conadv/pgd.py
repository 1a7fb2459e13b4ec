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

Backend-neutral functions (``keras.ops``) on TensorFlow and JAX tensors; only the two
backend-bound steps dispatch on ``keras.config.backend()``: the random start's draw
(``tf.random.stateless_uniform`` from a shape-[2] seed; ``jax.random.uniform`` from the
uint32 key data of ``randomness.jax_draw_key``) and the input gradient (a tape;
``jax.grad``).  The model enters only through ``loss_fn(x) -> scalar``, so the caller
decides which weights and which BatchNorm statistics the attack sees (``ConAdv`` uses a
stateless call of the network with the auxiliary BN in training mode; see
``adv_large_batch.conadv``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from adv_large_batch.models.inputs import IMAGE_RANGE

PIXEL_SCALE = 255.0
VALUE_RANGE = IMAGE_RANGE  # the images' range (models/inputs.py)


def pixels_to_unit(pixels: float) -> float:
    """A distance in pixel units out of 255 as a distance on ``[0, 1]`` images."""
    return float(pixels) / PIXEL_SCALE


def random_start(
    x: Any,
    eps: float,
    seed: Any,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> Any:
    """``x`` plus uniform noise in ``[-eps, eps]``, clipped to ``value_range``.

    ``seed``: a shape-[2] integer tensor (TensorFlow's stateless ops) or JAX key data.
    """
    return ops.clip(x + uniform_noise(x, eps, seed), value_range[0], value_range[1])


def uniform_noise(like: Any, eps: float, seed: Any) -> Any:
    """Uniform noise in ``[-eps, eps]`` of ``like``'s shape and dtype, a pure function of
    ``seed`` (the backend's stateless draw)."""
    if keras.config.backend() == "jax":
        import jax

        key = jax.random.wrap_key_data(seed)
        return jax.random.uniform(key, like.shape, like.dtype, -eps, eps)
    import tensorflow as tf

    return tf.random.stateless_uniform(tf.shape(like), seed, -eps, eps, dtype=like.dtype)


def project(
    x_adv: Any,
    x: Any,
    eps: float,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> Any:
    """Nearest point of the l-inf ball of radius ``eps`` around ``x`` inside ``value_range``."""
    x_adv = ops.clip(x_adv, x - eps, x + eps)
    return ops.clip(x_adv, value_range[0], value_range[1])


def finite_or_zero(grad: Any) -> Any:
    """``grad`` with its non-finite entries (inf, NaN) replaced by 0: no direction there."""
    return ops.where(ops.isfinite(grad), grad, ops.zeros_like(grad))


def nonfinite_entries(grad: Any, per_row: bool = False) -> Any:
    """How many entries of ``grad`` are not finite (float32): in all, or one count per row."""
    bad = ops.cast(ops.logical_not(ops.isfinite(grad)), "float32")
    if per_row:
        return ops.sum(ops.reshape(bad, (ops.shape(bad)[0], -1)), axis=1)
    return ops.sum(bad)


def ascent_step(x_adv: Any, grad: Any, step: float) -> Any:
    """One l-inf steepest-ascent step: ``x_adv + step * sign(grad)``; an entry whose
    gradient is not finite does not move (``finite_or_zero``)."""
    return x_adv + step * ops.sign(ops.cast(finite_or_zero(grad), x_adv.dtype))


def input_gradient(loss_fn: Callable[[Any], Any], x: Any) -> Any:
    """``grad_x loss_fn(x)``; no gradient reaches the weights (on TensorFlow the tape
    watches only x; on JAX ``jax.grad`` differentiates x alone)."""
    if keras.config.backend() == "jax":
        import jax

        return jax.grad(loss_fn)(x)
    import tensorflow as tf

    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        loss = loss_fn(x)
    return tape.gradient(loss, x)


def pgd_attack(
    loss_fn: Callable[[Any], Any],
    x: Any,
    eps: float,
    step: float,
    seed: Any,
    steps: int = 1,
    random_init: bool = True,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> Any:
    """PGD-``steps`` adversarial examples of ``x`` for the loss ``loss_fn`` (to be increased).

    ``eps`` and ``step`` are in the units of ``x`` (use ``pixels_to_unit``).  The
    result lies in the ball and in ``value_range`` and carries no gradient; a pixel
    whose gradient is not finite does not move at that step.
    """
    return pgd_attack_with_overflow(loss_fn, x, eps, step, seed, steps, random_init, value_range)[0]


def pgd_attack_with_overflow(
    loss_fn: Callable[[Any], Any],
    x: Any,
    eps: float,
    step: float,
    seed: Any,
    steps: int = 1,
    random_init: bool = True,
    value_range: tuple[float, float] = VALUE_RANGE,
) -> tuple[Any, Any]:
    """``(pgd_attack(...), n)``: ``n`` (float32) counts the non-finite input-gradient
    entries over all steps (0 when nothing overflowed)."""
    x = ops.stop_gradient(x)
    x_adv = random_start(x, eps, seed, value_range) if random_init else x
    nonfinite = ops.zeros((), "float32")
    for _ in range(steps):
        grad = input_gradient(loss_fn, x_adv)
        nonfinite += nonfinite_entries(grad)
        x_adv = project(ascent_step(x_adv, grad, step), x, eps, value_range)
    return ops.stop_gradient(x_adv), nonfinite


def linf_distance(x_adv: Any, x: Any) -> Any:
    """The largest absolute pixel difference over the batch (in the units of ``x``)."""
    return ops.max(ops.abs(ops.cast(x_adv, "float32") - ops.cast(x, "float32")))


def shared_pass_examples(x: Any, input_grad: Any, eps: float, step: float) -> Any:
    """FGSM from the clean point: ``x + step sign(g)`` projected to the eps ball around
    ``x`` and to [0, 1] (no gradient flows through the result); where ``g`` is not
    finite the clean pixel is kept."""
    x = ops.stop_gradient(x)
    return ops.stop_gradient(project(ascent_step(x, input_grad, step), x, eps))


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
    "uniform_noise",
]
