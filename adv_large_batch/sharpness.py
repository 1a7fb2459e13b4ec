"""Sharpness of a trained model: the top eigenvalue of the training loss's Hessian.

ScaLA ("ScaLA: Speeding-Up Fine-tuning of Pre-trained Transformer Networks via
Efficient and Scalable Adversarial Perturbation", arXiv:2201.12469; figure 4c of the
ICLR 2022 submission) compares the sharpness of the
minima that small-batch, large-batch and ScaLA training reach: the largest
eigenvalue of the Hessian of the training loss with respect to the trainable
weights, on one fixed batch of training data.  It is found by power iteration
on Hessian-vector products, which never form the Hessian:

    v_0  = random unit vector (seeded)
    H v  = d/dw (grad_w L(w) . v)             double backprop, one tf.function
    l_k  = v_k . H v_k                        Rayleigh quotient (v_k has unit norm)
    v_k+1 = H v_k / |H v_k|                   until |l_k - l_k-1| < tolerance |l_k|

Power iteration finds the eigenvalue of largest magnitude; near a minimum the
Hessian is close to positive semi-definite, so that is the top one.

The math is two pure functions (``hessian_vector_product``,
``top_hessian_eigenvalue``); ``run`` is the ``adv-large-batch sharpness``
plumbing: resolve the checkpoint, rebuild the network and the run's training
data from its ``meta.json``, restore the network's weights from ``state.npz``
by variable path, and evaluate the plain task loss (cross-entropy, MSE for
regression; no perturbation) with dropout off (``training=False``) in float32,
so the loss is a deterministic function of the weights.

Example (the command line):

```bash
.venv/bin/adv-large-batch finetune --checkpoint-dir runs/ft/ckpt ...   # any finished run
.venv/bin/adv-large-batch sharpness --checkpoint runs/ft/ckpt --batch-size 128 \
    --iterations 20 --json-out runs/ft/sharpness.json
# [sharpness] top Hessian eigenvalue <value> after <k> power iterations (converged)
```

From Python, on any loss:

```python
import keras, numpy as np
from adv_large_batch.sharpness import top_hessian_eigenvalue

x = np.random.RandomState(0).normal(size=(32, 4)).astype("float32")
y = x.sum(axis=1)
net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                        keras.layers.Dense(1)])
loss_fn = lambda: keras.ops.mean((net(x, training=False)[:, 0] - y) ** 2)  # a scalar
found = top_hessian_eigenvalue(loss_fn, net.trainable_variables, iterations=50)
print(found["eigenvalue"], found["iterations"], found["history"])
```
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from adv_large_batch.engine.batching import dense

LossFn = Callable[[], tf.Tensor]


# ---- the math -------------------------------------------------------------------------------
def hessian_vector_product(
    loss_fn: LossFn, variables: Sequence[Any], vector: Sequence[tf.Tensor]
) -> list[tf.Tensor]:
    """``H v``: the Hessian of ``loss_fn()`` with respect to ``variables`` times ``vector``.

    Double backprop: the gradient of ``grad(loss) . v`` (``v`` held constant) is
    ``H v``.  ``vector`` has one tensor per variable, of its shape; a variable the
    loss does not reach gets zeros.  Works eagerly and inside ``tf.function``
    (``make_hvp`` compiles it once).
    """
    variables = list(variables)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn()
        grads = _dense(inner.gradient(loss, variables), variables)
        dot = tf.add_n(
            [
                tf.reduce_sum(g * tf.stop_gradient(tf.cast(v, g.dtype)))
                for g, v in zip(grads, vector)
            ]
        )
    return _dense(outer.gradient(dot, variables), variables)


def _dense(grads: Sequence[Any], variables: Sequence[Any]) -> list[tf.Tensor]:
    """Gradients as dense tensors: zeros for an unconnected variable (e.g. the auxiliary BN
    with ``training=False``), embedding lookups' ``IndexedSlices`` densified."""
    return [tf.convert_to_tensor(dense(g, v)) for g, v in zip(grads, variables)]


def make_hvp(
    loss_fn: LossFn, variables: Sequence[Any]
) -> Callable[[Sequence[tf.Tensor]], list[tf.Tensor]]:
    """``hessian_vector_product`` of a fixed loss and variables as one ``tf.function``."""
    variables = list(variables)
    return tf.function(lambda vector: hessian_vector_product(loss_fn, variables, vector))


def _dot(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> float:
    """Inner product of two vectors (lists of tensors), accumulated in float64."""
    return float(
        sum(
            tf.reduce_sum(tf.cast(x, tf.float64) * tf.cast(y, tf.float64)).numpy()
            for x, y in zip(a, b)
        )
    )


def top_hessian_eigenvalue(
    loss_fn: LossFn,
    variables: Sequence[Any],
    iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """The Hessian's eigenvalue of largest magnitude, by power iteration.

    Starts from a seeded Gaussian unit vector; each iteration is one
    Hessian-vector product ``H v``, the estimate is the Rayleigh quotient
    ``v . H v`` and the next ``v`` is ``H v / |H v|``.  Stops after ``iterations``
    products, or once the estimate changes by less than ``tolerance`` relative to
    itself (``tolerance=0``: always ``iterations``).

    Returns ``{"eigenvalue", "iterations", "history", "converged"}``: the last
    estimate, how many products were computed, every estimate, and whether the
    tolerance was met (or ``H v`` was exactly zero).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    variables = list(variables)
    hvp = make_hvp(loss_fn, variables)
    rng = np.random.default_rng(seed)
    v = [tf.constant(rng.standard_normal(tuple(var.shape)), dtype=var.dtype) for var in variables]
    norm = np.sqrt(_dot(v, v))
    v = [x / tf.cast(norm, x.dtype) for x in v]
    history: list[float] = []
    converged = False
    for _ in range(iterations):
        hv = hvp(v)
        history.append(_dot(v, hv))
        norm = np.sqrt(_dot(hv, hv))
        if norm == 0.0:  # v is in the null space: H v = 0 v
            converged = True
            break
        if len(history) > 1 and abs(history[-1] - history[-2]) < tolerance * abs(history[-1]):
            converged = True
            break
        v = [x / tf.cast(norm, x.dtype) for x in hv]
    return {
        "eigenvalue": history[-1],
        "iterations": len(history),
        "history": history,
        "converged": converged,
    }
