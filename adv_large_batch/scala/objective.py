"""ScaLA's adversarial term of one micro-batch, once for both trainer shells (``keras.ops``).

The shells differ only in how a forward pass is run with its dropout masks, so the math
takes that as a callable, ``logits_at(embeddings, forward_pass) -> logits``: the
TensorFlow shell reseeds the network's dropout generators and calls the network, the
JAX shell calls it inside a ``keras.StatelessScope`` with keyed generator states.
``forward_pass`` numbers the passes of a micro-batch (0 = clean, 1..K = the ascent,
K + 1 = the adversarial pass); ``pass_of`` maps it to the dropout key (one key for all
passes with ``ScaLAConfig.dropout == "shared"``).

    y_K, r(y0) = perturbation(...)        random start + PGA-K (no weight gradients)
    r, |y|     = adversarial_terms(...)   the regulariser at e + y_K (weight gradients)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops

from adv_large_batch.scala import perturbation as pert
from adv_large_batch.scala.config import ScaLAConfig

#: ``logits_at(embeddings, forward_pass)``: the network's logits from token embeddings.
LogitsAt = Callable[[Any, int], Any]


def pass_of(config: ScaLAConfig, index: int) -> int:
    """The dropout key of forward pass ``index`` of a micro-batch (0 = clean)."""
    return 0 if config.dropout == "shared" else index


def target_of(config: ScaLAConfig, clean_logits: Any, y: Any) -> Any:
    """The regulariser's target: the labels (GT), or the detached clean logits (LP)."""
    if config.adv_target == "labels":
        return y
    return ops.stop_gradient(ops.cast(clean_logits, "float32"))


def radius(config: ScaLAConfig, e: Any, padding_mask: Any) -> tuple[Any, Any, Any]:
    """(eps, rho, noise scale): numbers, or ``[B, 1, 1]`` tensors for ``relative``."""
    noise = config.eps if config.noise_scale is None else config.noise_scale
    if config.radius == "absolute":
        return config.eps, config.step_size, noise
    rms = ops.stop_gradient(pert.embedding_rms(e, padding_mask))
    return config.eps * rms, config.step_size * rms, noise * rms


def perturbation(
    config: ScaLAConfig,
    logits_at: LogitsAt,
    e: Any,
    padding_mask: Any,
    target: Any,
    regression: bool,
    start_key: Any,
) -> tuple[Any, Any]:
    """(y_K, r(y0)): the perturbation of the final adversarial pass (detached).

    R-Drop makes none (zeros); the Gaussian method draws one; ScaLA starts at
    ``random_start`` keyed by ``start_key`` and climbs K projected steps of
    ``r(y) = regulariser(target, logits_at(sg(e) + y))``.
    """
    shape = ops.shape(e)
    if config.method == "rdrop":
        return ops.zeros(shape, "float32"), ops.convert_to_tensor(0.0)
    eps, step, noise = radius(config, e, padding_mask)
    if config.method == "gaussian":
        y = pert.random_start(shape, eps, "normal", noise, start_key)
        return pert.mask_padding(y, padding_mask), ops.convert_to_tensor(0.0)
    y0 = pert.random_start(shape, eps, config.init, noise, start_key)
    e_fixed = ops.stop_gradient(ops.cast(e, "float32"))
    passes = iter(range(1, config.steps + 1))

    def regulariser_of(y: Any) -> Any:
        logits = logits_at(ops.cast(e_fixed + y, e.dtype), pass_of(config, next(passes)))
        return pert.adversarial_regulariser(target, logits, config.adv_target, regression)

    return pert.projected_gradient_ascent(
        regulariser_of, y0, step, eps, config.steps, config.step_norm, padding_mask
    )


def adversarial_terms(
    config: ScaLAConfig,
    logits_at: LogitsAt,
    e: Any,
    target: Any,
    regression: bool,
    delta: Any,
) -> tuple[Any, Any, Any]:
    """(r, max |y|, mean ||y||_2): the regulariser at ``e + delta`` (differentiable in the
    weights through ``e`` and the network) and the perturbation's size."""
    logits = logits_at(e + ops.cast(delta, e.dtype), pass_of(config, config.steps + 1))
    r = pert.adversarial_regulariser(target, logits, config.adv_target, regression)
    linf, l2 = pert.perturbation_norms(delta)
    return r, linf, l2


__all__ = ["LogitsAt", "adversarial_terms", "pass_of", "perturbation", "radius", "target_of"]
