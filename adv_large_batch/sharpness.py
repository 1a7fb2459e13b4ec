"""Sharpness of a trained model: the top eigenvalue of the training loss's Hessian.

ScaLA ("ScaLA: Speeding-Up Fine-tuning of Pre-trained Transformer Networks via
Efficient and Scalable Adversarial Perturbation", arXiv:2201.12469; figure 4c of the
ICLR 2022 submission) compares the sharpness of the
minima that small-batch, large-batch and ScaLA training reach: the largest
eigenvalue of the Hessian of the training loss with respect to the trainable
weights, on one fixed batch of training data.  It is found by power iteration
on Hessian-vector products, which never form the Hessian:

    v_0  = random unit vector (NumPy, seeded: the same on every backend)
    H v  = d/dw (grad_w L(w) . v)             one compiled function per backend
    l_k  = v_k . H v_k                        Rayleigh quotient (v_k has unit norm)
    v_k+1 = H v_k / |H v_k|                   until |l_k - l_k-1| < tolerance |l_k|

Power iteration finds the eigenvalue of largest magnitude; near a minimum the
Hessian is close to positive semi-definite, so that is the top one.

Two halves:

* the power iteration (``start_vector``, ``top_hessian_eigenvalue``): NumPy only, on
  vectors that are lists of arrays (one per weight), given any ``Hvp`` callable;
* the Hessian-vector products, one maker per Keras backend, each compiled once and
  taking the NumPy vector (cast to each weight's dtype):
  TensorFlow: double backprop of a ``loss_fn()`` closure over variables
  (``hessian_vector_product``, ``make_hvp``, one ``tf.function``); JAX: forward over
  reverse, ``jax.jvp`` of ``jax.grad`` of a pure loss of the weights' values
  (``make_jax_hvp``, one ``jax.jit``; ``stateless_loss`` makes that loss from a Keras
  network with ``stateless_call``).  ``network_hvp`` picks the process's backend.

Each backend's library is imported inside the function that needs it, so importing this
module imports neither TensorFlow nor JAX.  ``commands/sharpness.py`` is the
``adv-large-batch sharpness`` plumbing (checkpoint, network, batch, task loss).

Example (the command line):

```bash
.venv/bin/adv-large-batch finetune --checkpoint-dir runs/ft/ckpt ...   # any finished run
.venv/bin/adv-large-batch sharpness --checkpoint runs/ft/ckpt --batch-size 128 \
    --iterations 20 --json-out runs/ft/sharpness.json
# [sharpness] top Hessian eigenvalue <value> after <k> power iterations (converged)
```

From Python, on a Keras network (either backend), or on any loss with its own ``Hvp``:

```python
import keras, numpy as np
from adv_large_batch.sharpness import network_hvp, top_hessian_eigenvalue

x = np.random.RandomState(0).normal(size=(32, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)
net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                        keras.layers.Dense(1)])
hvp = network_hvp(net, keras.losses.MeanSquaredError(), x, y)
shapes = [tuple(v.shape) for v in net.trainable_variables]
found = top_hessian_eigenvalue(hvp, shapes, iterations=50, seed=0)
print(found["eigenvalue"], found["iterations"], found["history"])

a = np.diag([3.0, 1.0, -2.0])  # H v of the quadratic 0.5 x^T A x is A v
assert abs(top_hessian_eigenvalue(lambda v: [a @ v[0]], [(3,)], 200)["eigenvalue"] - 3) < 1e-2
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: ``H v`` at fixed weights: one array per weight in (float64 NumPy, each of its weight's
#: shape), one array per weight out (NumPy or a backend tensor; read with ``np.asarray``).
Hvp = Callable[[Sequence[np.ndarray]], Sequence[Any]]
LossFn = Callable[[], Any]


# ---- the power iteration (NumPy) ----------------------------------------------------------
def dot(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Inner product of two vectors (lists of arrays of matching shapes), in float64."""
    return float(
        sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(a, b))
    )


def start_vector(shapes: Sequence[Sequence[int]], seed: int) -> list[np.ndarray]:
    """A seeded Gaussian unit vector, float64: one array per shape, drawn in order.

    A pure function of (shapes, seed), so every backend starts from the same vector.
    ``ValueError`` when there is nothing to draw (no shapes, or every one empty).
    """
    rng = np.random.default_rng(seed)
    v = [rng.standard_normal(tuple(int(d) for d in s)) for s in shapes]
    norm = np.sqrt(dot(v, v))
    if norm == 0.0:
        raise ValueError(f"no weights to take the Hessian over: shapes {list(shapes)}")
    return [x / norm for x in v]


def _checked(hv: Sequence[Any], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """``hv`` as float64 arrays; ``ValueError`` naming the shapes unless they are ``shapes``."""
    out = [np.asarray(x, np.float64) for x in hv]
    got = [x.shape for x in out]
    if got != shapes:
        raise ValueError(f"hvp returned arrays of shapes {got}, expected {shapes}")
    return out


def top_hessian_eigenvalue(
    hvp: Hvp,
    shapes: Sequence[Sequence[int]],
    iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """The Hessian's eigenvalue of largest magnitude, by power iteration on ``hvp``.

    ``shapes``: one per weight, in ``hvp``'s order.  Starts from ``start_vector(shapes,
    seed)``; each iteration is one call ``hvp(v)`` (``v`` a list of float64 arrays), the
    estimate is the Rayleigh quotient ``v . H v`` and the next ``v`` is ``H v / |H v|``
    (dots and norms in float64).  Stops after ``iterations`` products, or once the
    estimate changes by less than ``tolerance`` relative to itself (``tolerance=0``:
    always ``iterations``).

    Returns ``{"eigenvalue", "iterations", "history", "converged"}``: the last
    estimate, how many products were computed, every estimate, and whether the
    tolerance was met (or ``H v`` was exactly zero).  ``ValueError`` for
    ``iterations < 1``, ``tolerance < 0``, no weights, or ``hvp`` returning other shapes.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    shapes = [tuple(int(d) for d in s) for s in shapes]
    v = start_vector(shapes, seed)
    history: list[float] = []
    converged = False
    for _ in range(iterations):
        hv = _checked(hvp(v), shapes)
        history.append(dot(v, hv))
        norm = np.sqrt(dot(hv, hv))
        if norm == 0.0:  # v is in the null space: H v = 0 v
            converged = True
            break
        if len(history) > 1 and abs(history[-1] - history[-2]) < tolerance * abs(history[-1]):
            converged = True
            break
        v = [x / norm for x in hv]
    return {
        "eigenvalue": history[-1],
        "iterations": len(history),
        "history": history,
        "converged": converged,
    }


def _cast(vector: Sequence[Any], dtypes: Sequence[str]) -> list[np.ndarray]:
    """Each array of ``vector`` as a NumPy array of its weight's dtype."""
    return [np.asarray(x, dtype) for x, dtype in zip(vector, dtypes)]


# ---- H v on TensorFlow: double backprop ----------------------------------------------------
def hessian_vector_product(
    loss_fn: LossFn, variables: Sequence[Any], vector: Sequence[Any]
) -> list[Any]:
    """``H v``: the Hessian of ``loss_fn()`` with respect to ``variables`` times ``vector``
    (TensorFlow backend; tensors in, tensors out).

    Double backprop: the gradient of ``grad(loss) . v`` (``v`` held constant) is
    ``H v``.  ``vector`` has one tensor per variable, of its shape (cast to the
    gradient's dtype); a variable the loss does not reach gets zeros.  Works eagerly
    and inside ``tf.function`` (``make_hvp`` compiles it once).
    """
    import tensorflow as tf

    variables = list(variables)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn()
        grads = _dense(inner.gradient(loss, variables), variables)
        dot_ = tf.add_n(
            [
                tf.reduce_sum(g * tf.stop_gradient(tf.cast(v, g.dtype)))
                for g, v in zip(grads, vector)
            ]
        )
    return _dense(outer.gradient(dot_, variables), variables)


def _dense(grads: Sequence[Any], variables: Sequence[Any]) -> list[Any]:
    """Gradients as dense tensors: zeros for an unconnected variable (e.g. the auxiliary BN
    with ``training=False``), embedding lookups' ``IndexedSlices`` densified."""
    import tensorflow as tf

    from adv_large_batch.engine.batching import dense

    return [tf.convert_to_tensor(dense(g, v)) for g, v in zip(grads, variables)]


def make_hvp(loss_fn: LossFn, variables: Sequence[Any]) -> Hvp:
    """``hessian_vector_product`` of a fixed loss and variables as one ``tf.function``
    (TensorFlow backend); the vector is cast to each variable's dtype first."""
    import keras
    import tensorflow as tf

    variables = list(variables)
    dtypes = [keras.backend.standardize_dtype(v.dtype) for v in variables]
    compiled = tf.function(lambda vector: hessian_vector_product(loss_fn, variables, vector))
    return lambda vector: compiled([tf.constant(x) for x in _cast(vector, dtypes)])


# ---- H v on JAX: forward over reverse ------------------------------------------------------
def make_jax_hvp(loss_of: Callable[..., Any], point: Sequence[Any], *data: Any) -> Hvp:
    """``H v`` of ``loss_of(weights, *data)`` with respect to ``weights`` (a list of
    arrays) at ``point`` (JAX backend; a pure function, compiled once with ``jax.jit``).

    Forward over reverse: ``jax.jvp`` of ``jax.grad(loss_of)`` in the direction ``v``.
    ``point`` and ``data`` (the batch, the network's other state) are arguments of the
    compiled function, not constants baked into it; the vector is cast to each weight's
    dtype.  A weight the loss does not reach gets zeros.
    """
    import jax

    point = list(point)
    dtypes = [np.dtype(p.dtype).name for p in point]

    @jax.jit
    def product(at: list[Any], tangent: list[Any], fixed: tuple[Any, ...]) -> list[Any]:
        gradient = jax.grad(lambda w: loss_of(w, *fixed))
        return jax.jvp(gradient, (at,), (tangent,))[1]

    return lambda vector: product(point, _cast(vector, dtypes), data)


def stateless_loss(network: Any, loss: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    """``loss_of(trainable_values, non_trainable_values, inputs, labels)``: the scalar
    ``loss(labels, network(inputs, training=False))`` at those values, through Keras'
    ``network.stateless_call`` (no variable is read or written: differentiable by JAX)."""

    def loss_of(trainable: list[Any], non_trainable: list[Any], inputs: Any, labels: Any) -> Any:
        outputs, _ = network.stateless_call(trainable, non_trainable, inputs, training=False)
        return loss(labels, outputs)

    return loss_of


def network_hvp(network: Any, loss: Callable[[Any, Any], Any], inputs: Any, labels: Any) -> Hvp:
    """``H v`` of ``loss(labels, network(inputs, training=False))`` with respect to
    ``network.trainable_variables`` (in that order) at their current values, on this
    process's Keras backend: ``make_hvp`` on TensorFlow, ``make_jax_hvp`` of
    ``stateless_loss`` on JAX.  ``inputs`` / ``labels``: NumPy arrays (or a dict of them)."""
    import keras

    from adv_large_batch import backend_ops

    inputs, labels = keras.tree.map_structure(keras.ops.convert_to_tensor, (inputs, labels))
    if backend_ops.backend() == "jax":
        trainable = [v.value for v in network.trainable_variables]
        non_trainable = [v.value for v in network.non_trainable_variables]
        return make_jax_hvp(stateless_loss(network, loss), trainable, non_trainable, inputs, labels)
    return make_hvp(
        lambda: loss(labels, network(inputs, training=False)), network.trainable_variables
    )


__all__ = [
    "Hvp",
    "dot",
    "hessian_vector_product",
    "make_hvp",
    "make_jax_hvp",
    "network_hvp",
    "start_vector",
    "stateless_loss",
    "top_hessian_eigenvalue",
]
