"""ScaLA's inner maximisation as small pure TensorFlow functions.

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

from typing import Callable

import tensorflow as tf

STEP_NORMS = ("none", "linf", "l2")
START_KINDS = ("uniform", "normal", "zero")


Radius = float | tf.Tensor  # a number, or a tensor broadcastable to y (per example)


def random_start(
    shape: tf.Tensor | tuple[int, ...],
    eps: Radius,
    kind: str = "uniform",
    scale: Radius | None = None,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """y0: uniform in [-eps, eps], normal with stddev ``scale`` (default eps), or zero.

    ``eps`` and ``scale`` may be tensors broadcastable to ``shape`` (a radius per
    example); ``seed`` is an optional shape-[2] int tensor for stateless sampling.
    """
    if kind == "zero":
        return tf.zeros(shape, tf.float32)
    if kind == "uniform":
        if seed is None:
            unit = tf.random.uniform(shape, -1.0, 1.0, dtype=tf.float32)
        else:
            unit = tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=tf.float32)
        return unit * tf.cast(eps, tf.float32)
    if kind == "normal":
        std = tf.cast(eps if scale is None else scale, tf.float32)
        if seed is None:
            return tf.random.normal(shape, dtype=tf.float32) * std
        return tf.random.stateless_normal(shape, seed, dtype=tf.float32) * std
    raise ValueError(f"random start kind must be one of {START_KINDS}, got {kind!r}")


def project_linf(y: tf.Tensor, eps: Radius) -> tf.Tensor:
    """Pi_eps: the Euclidean projection onto the l-inf ball of radius eps (a clip)."""
    eps = tf.cast(eps, y.dtype)
    return tf.clip_by_value(y, -eps, eps)


def embedding_rms(e: tf.Tensor, padding_mask: tf.Tensor) -> tf.Tensor:
    """Root-mean-square of each example's token embeddings over its real tokens and the
    hidden units: ``[B, 1, 1]`` (the scale of ``--adv-radius relative``)."""
    e = tf.cast(e, tf.float32)
    mask = tf.cast(padding_mask, tf.float32)[..., tf.newaxis]
    squares = tf.reduce_sum(tf.square(e) * mask, axis=[1, 2], keepdims=True)
    count = tf.reduce_sum(mask, axis=[1, 2], keepdims=True) * tf.cast(tf.shape(e)[-1], tf.float32)
    return tf.sqrt(squares / tf.maximum(count, 1.0))


def mask_padding(y: tf.Tensor, padding_mask: tf.Tensor) -> tf.Tensor:
    """Zero the perturbation rows of padding positions (``y``: [B, T, H], mask: [B, T])."""
    return y * tf.cast(padding_mask, y.dtype)[..., tf.newaxis]


def normalize_gradient(grad: tf.Tensor, norm: str = "none", tiny: float = 1e-12) -> tf.Tensor:
    """The ascent direction: the raw gradient, or the gradient over its per-example norm.

    ``linf`` (SMART) divides each example's gradient by its max-abs entry, ``l2``
    (FreeLB) by its Euclidean norm; an all-zero gradient stays zero.
    """
    grad = tf.convert_to_tensor(grad)
    if norm == "none":
        return grad
    axes = list(range(1, grad.shape.rank))
    if norm == "linf":
        size = tf.reduce_max(tf.abs(grad), axis=axes, keepdims=True)
    elif norm == "l2":
        size = tf.sqrt(tf.reduce_sum(tf.square(grad), axis=axes, keepdims=True))
    else:
        raise ValueError(f"step norm must be one of {STEP_NORMS}, got {norm!r}")
    return grad / (size + tiny)


def ascent_step(
    y: tf.Tensor,
    grad: tf.Tensor,
    step_size: Radius,
    eps: Radius,
    norm: str = "none",
    padding_mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """One projected gradient-ascent step: Pi_eps(y + rho * step(grad))."""
    y = project_linf(y + tf.cast(step_size, y.dtype) * normalize_gradient(grad, norm), eps)
    return y if padding_mask is None else mask_padding(y, padding_mask)


def symmetric_kl_from_logits(p_logits: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of KL(p||q) + KL(q||p), from logits (log-softmax, stable).

    KL(p||q) + KL(q||p) = sum_c (p_c - q_c) (log p_c - log q_c), which is
    symmetric, >= 0 and zero exactly when p == q.
    """
    log_p = tf.nn.log_softmax(tf.cast(p_logits, tf.float32), axis=-1)
    log_q = tf.nn.log_softmax(tf.cast(q_logits, tf.float32), axis=-1)
    per_example = tf.reduce_sum((tf.exp(log_p) - tf.exp(log_q)) * (log_p - log_q), axis=-1)
    return tf.reduce_mean(per_example)


def label_kl_from_logits(labels: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """KL(one_hot(labels) || q) = cross-entropy, batch mean (the GT-target variant).

    The reverse term KL(q || one_hot) is infinite for a one-hot target, so the
    ground-truth variant keeps only the forward KL.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(q_logits, tf.float32))
    )


def squared_error(target: tf.Tensor, prediction: tf.Tensor) -> tf.Tensor:
    """Mean squared difference (the regression regulariser, STS-B)."""
    target = tf.reshape(tf.cast(target, tf.float32), [-1])
    prediction = tf.reshape(tf.cast(prediction, tf.float32), [-1])
    return tf.reduce_mean(tf.square(target - prediction))


def adversarial_regulariser(
    target: tf.Tensor, adv_logits: tf.Tensor, target_kind: str, regression: bool
) -> tf.Tensor:
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
    regulariser_of: Callable[[tf.Tensor], tf.Tensor],
    y0: tf.Tensor,
    step_size: Radius,
    eps: Radius,
    steps: int = 1,
    norm: str = "none",
    padding_mask: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """PGA-K on ``r = regulariser_of(y)``; returns (y_K, r(y0)).

    ``regulariser_of`` maps a perturbation to the scalar r, a mean over the batch; the
    ascent follows the gradient of the per-example *sum* (batch size x r), so with the
    raw gradient (``norm="none"``) each example's step does not shrink as the
    micro-batch grows (the normalised steps are scale-free anyway).  The returned y_K
    is detached (it is an input to the outer problem, not a function of x).
    """
    y = y0 if padding_mask is None else mask_padding(y0, padding_mask)
    rows = tf.cast(tf.shape(y)[0], tf.float32)
    r_start = None
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(y)
            r = regulariser_of(y)
            total = r * rows  # the per-example sum
        if r_start is None:
            r_start = r
        grad = tape.gradient(total, y)
        y = ascent_step(y, grad, step_size, eps, norm, padding_mask)
    if r_start is None:
        r_start = regulariser_of(y)
    return tf.stop_gradient(y), tf.stop_gradient(r_start)


def perturbation_norms(y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(max |y| over the batch, mean over examples of ||y_i||_2)."""
    y = tf.convert_to_tensor(y)
    linf = tf.reduce_max(tf.abs(y))
    axes = list(range(1, y.shape.rank))
    l2 = tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(y), axis=axes)))
    return linf, l2
