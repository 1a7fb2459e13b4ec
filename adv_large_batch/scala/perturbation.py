"""ScaLA's inner maximisation as small pure functions in ``keras.ops`` (one copy for the
TensorFlow and the JAX backend; the gradient and the keyed draws: ``backend_ops``).

Paper: "ScaLA: Speeding-Up Fine-tuning of Pre-trained Transformer Networks via Efficient
and Scalable Adversarial Perturbation" (Zhang et al., arXiv:2201.12469; numbering of the
ICLR 2022 submission, see ``adv_large_batch.scala``), section 3.1 ("Inner Maximization",
"Practical Considerations") and Algorithm 1, lines 6-9:

    y0            random start in the l-inf ball of radius eps (or Gaussian)
    r(y)          = KL_sym(stop_gradient(p_clean), p(e + y))   (classification)
                  = (stop_gradient(f_clean) - f(e + y))^2       (regression)
    y_{k+1}       = Pi_eps(y_k + rho * step(grad_y r(y_k)))   k = 0..K-1  (PGA-K)

``step`` is the identity in the paper (raw gradient).  FreeLB and SMART
normalise it instead (per-example l2 or l-inf norm), so that one step of size
rho reaches the boundary whatever the scale of the gradient.  Both are here;
``scala.ScaLAConfig.step_norm`` picks one and the README records which default
the measurements favoured and why.

Every function takes and returns tensors; none touches Keras state.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

from adv_large_batch import backend_ops

STEP_NORMS = ("none", "linf", "l2")
START_KINDS = ("uniform", "normal", "zero")


Radius = Any  # a number, or a tensor broadcastable to y (per example)


def random_start(
    shape: Any,
    eps: Radius,
    kind: str = "uniform",
    scale: Radius | None = None,
    seed: Any = None,
) -> Any:
    """y0: uniform in [-eps, eps], normal with stddev ``scale`` (default eps), or zero.

    ``eps`` and ``scale`` may be tensors broadcastable to ``shape`` (a radius per
    example); ``seed``: a shape-[2] int tensor, the draw a pure function of it
    (``backend_ops``); None: a fresh draw of Keras' global generator (eager use only).
    """
    if kind == "zero":
        return ops.zeros(shape, "float32")
    if kind == "uniform":
        if seed is None:
            unit = keras.random.uniform(shape, -1.0, 1.0, dtype="float32")
        else:
            unit = backend_ops.stateless_uniform(shape, seed, -1.0, 1.0)
        return unit * ops.cast(eps, "float32")
    if kind == "normal":
        std = ops.cast(eps if scale is None else scale, "float32")
        if seed is None:
            return keras.random.normal(shape, dtype="float32") * std
        return backend_ops.stateless_normal(shape, seed) * std
    raise ValueError(f"random start kind must be one of {START_KINDS}, got {kind!r}")


def project_linf(y: Any, eps: Radius) -> Any:
    """Pi_eps: the Euclidean projection onto the l-inf ball of radius eps (a clip)."""
    eps = ops.cast(eps, y.dtype)
    return ops.clip(y, -eps, eps)


def embedding_rms(e: Any, padding_mask: Any) -> Any:
    """Root-mean-square of each example's token embeddings over its real tokens and the
    hidden units: ``[B, 1, 1]`` (the scale of ``--adv-radius relative``)."""
    e = ops.cast(e, "float32")
    mask = ops.expand_dims(ops.cast(padding_mask, "float32"), -1)
    squares = ops.sum(ops.square(e) * mask, axis=(1, 2), keepdims=True)
    count = ops.sum(mask, axis=(1, 2), keepdims=True) * ops.cast(ops.shape(e)[-1], "float32")
    return ops.sqrt(squares / ops.maximum(count, 1.0))


def mask_padding(y: Any, padding_mask: Any) -> Any:
    """Zero the perturbation rows of padding positions (``y``: [B, T, H], mask: [B, T])."""
    return y * ops.expand_dims(ops.cast(padding_mask, y.dtype), -1)


def normalize_gradient(grad: Any, norm: str = "none", tiny: float = 1e-12) -> Any:
    """The ascent direction: the raw gradient, or the gradient over its per-example norm.

    ``linf`` (SMART) divides each example's gradient by its max-abs entry, ``l2``
    (FreeLB) by its Euclidean norm; an all-zero gradient stays zero.
    """
    grad = ops.convert_to_tensor(grad)
    if norm == "none":
        return grad
    axes = tuple(range(1, len(grad.shape)))
    if norm == "linf":
        size = ops.max(ops.abs(grad), axis=axes, keepdims=True)
    elif norm == "l2":
        size = ops.sqrt(ops.sum(ops.square(grad), axis=axes, keepdims=True))
    else:
        raise ValueError(f"step norm must be one of {STEP_NORMS}, got {norm!r}")
    return grad / (size + tiny)


def ascent_step(
    y: Any,
    grad: Any,
    step_size: Radius,
    eps: Radius,
    norm: str = "none",
    padding_mask: Any = None,
) -> Any:
    """One projected gradient-ascent step: Pi_eps(y + rho * step(grad))."""
    y = project_linf(y + ops.cast(step_size, y.dtype) * normalize_gradient(grad, norm), eps)
    return y if padding_mask is None else mask_padding(y, padding_mask)


def symmetric_kl_from_logits(p_logits: Any, q_logits: Any) -> Any:
    """Mean over the batch of KL(p||q) + KL(q||p), from logits (log-softmax, stable).

    KL(p||q) + KL(q||p) = sum_c (p_c - q_c) (log p_c - log q_c), which is
    symmetric, >= 0 and zero exactly when p == q.
    """
    log_p = ops.log_softmax(ops.cast(p_logits, "float32"), axis=-1)
    log_q = ops.log_softmax(ops.cast(q_logits, "float32"), axis=-1)
    per_example = ops.sum((ops.exp(log_p) - ops.exp(log_q)) * (log_p - log_q), axis=-1)
    return ops.mean(per_example)


def label_kl_from_logits(labels: Any, q_logits: Any) -> Any:
    """KL(one_hot(labels) || q) = cross-entropy, batch mean (the GT-target variant).

    The reverse term KL(q || one_hot) is infinite for a one-hot target, so the
    ground-truth variant keeps only the forward KL.
    """
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    return ops.mean(
        ops.sparse_categorical_crossentropy(labels, ops.cast(q_logits, "float32"), from_logits=True)
    )


def squared_error(target: Any, prediction: Any) -> Any:
    """Mean squared difference (the regression regulariser, STS-B)."""
    target = ops.reshape(ops.cast(target, "float32"), (-1,))
    prediction = ops.reshape(ops.cast(prediction, "float32"), (-1,))
    return ops.mean(ops.square(target - prediction))


def adversarial_regulariser(
    target: Any, adv_logits: Any, target_kind: str, regression: bool
) -> Any:
    """r for one batch.

    ``target_kind``: ``probs`` (target = the model's own detached logits, LP) or
    ``labels`` (ground-truth labels, GT).
    """
    if regression:
        return squared_error(target, adv_logits)
    if target_kind == "probs":
        return symmetric_kl_from_logits(target, adv_logits)
    if target_kind == "labels":
        return label_kl_from_logits(target, adv_logits)
    raise ValueError(f"adv target must be 'probs' or 'labels', got {target_kind!r}")


def projected_gradient_ascent(
    regulariser_of: Callable[[Any], Any],
    y0: Any,
    step_size: Radius,
    eps: Radius,
    steps: int = 1,
    norm: str = "none",
    padding_mask: Any = None,
) -> tuple[Any, Any]:
    """PGA-K on ``r = regulariser_of(y)``; returns (y_K, r(y0)).

    ``regulariser_of`` maps a perturbation to the scalar r, a mean over the batch; the
    ascent follows the gradient of the per-example *sum* (batch size x r), so with the
    raw gradient (``norm="none"``) each example's step does not shrink as the
    micro-batch grows (the normalised steps are scale-free anyway).  The returned y_K
    is detached (it is an input to the outer problem, not a function of x).
    """
    y = y0 if padding_mask is None else mask_padding(y0, padding_mask)
    rows = ops.cast(ops.shape(y)[0], "float32")

    def total_and_r(y: Any) -> tuple[Any, Any]:
        r = regulariser_of(y)
        return r * rows, r  # the per-example sum, and r

    r_start = None
    for _ in range(steps):
        grad, r = backend_ops.gradient_and_aux(total_and_r, y)
        if r_start is None:
            r_start = r
        y = ascent_step(y, grad, step_size, eps, norm, padding_mask)
    if r_start is None:
        r_start = regulariser_of(y)
    return ops.stop_gradient(y), ops.stop_gradient(r_start)


def perturbation_norms(y: Any) -> tuple[Any, Any]:
    """(max |y| over the batch, mean over examples of ||y_i||_2)."""
    y = ops.convert_to_tensor(y)
    linf = ops.max(ops.abs(y))
    axes = tuple(range(1, len(y.shape)))
    l2 = ops.mean(ops.sqrt(ops.sum(ops.square(y), axis=axes)))
    return linf, l2
