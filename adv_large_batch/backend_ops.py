"""What ``keras.ops`` lacks, one function per need, for each Keras backend.

The methods are written once in ``keras.ops``; two things have no ``keras.ops`` spelling
and live here:

* the gradient of a scalar with respect to an intermediate tensor (ScaLA's ascent on the
  token-embedding output): ``tf.GradientTape`` on TensorFlow, ``jax.grad`` on JAX;
* random draws keyed by an explicit ``[2]`` integer seed, so a draw is a pure function of
  (seed, batch counter, micro-batch, pass): ``tf.random.stateless_*`` on TensorFlow,
  ``jax.random`` on a key made from the seed on JAX.

Each backend's library is imported inside the function that needs it, so importing this
module imports neither.  A bottom-layer module: Keras and the standard library only.

Example:

```python
import keras
from adv_large_batch import backend_ops

grad, aux = backend_ops.gradient_and_aux(
    lambda y: (keras.ops.sum(y * y), keras.ops.max(y)), keras.ops.ones((2, 3)))
noise = backend_ops.stateless_uniform((2, 3), keras.ops.convert_to_tensor([1, 2]), -1.0, 1.0)
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

#: The backends the library's methods run on.
SUPPORTED = ("tensorflow", "jax")


def backend() -> str:
    """The Keras backend of this process, refused with a clear message if unsupported."""
    name = keras.config.backend()
    if name not in SUPPORTED:
        raise NotImplementedError(
            f"KERAS_BACKEND={name!r} is not supported by adv-large-batch; use one of {SUPPORTED}"
        )
    return name


def gradient_and_aux(fn: Callable[[Any], tuple[Any, Any]], x: Any) -> tuple[Any, Any]:
    """``(d value / d x, aux)`` where ``value, aux = fn(x)`` and ``value`` is a scalar.

    ``x`` is any tensor (not a variable), e.g. a perturbation added to an intermediate
    activation; ``aux`` is returned as computed (not differentiated).
    """
    if backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value, aux = fn(x)
        return tape.gradient(value, x), aux
    import jax

    grad, aux = jax.grad(fn, has_aux=True)(x)
    return grad, aux


def _jax_key(seed: Any) -> Any:
    import jax
    import jax.numpy as jnp

    return jax.random.wrap_key_data(jnp.asarray(seed).astype(jnp.uint32).reshape(2))


def stateless_uniform(shape: Any, seed: Any, minval: float, maxval: float) -> Any:
    """float32 uniform in ``[minval, maxval)``, a pure function of the ``[2]`` int ``seed``."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=tf.float32)
    import jax

    return jax.random.uniform(_jax_key(seed), tuple(shape), "float32", minval, maxval)


def stateless_normal(shape: Any, seed: Any) -> Any:
    """float32 standard normal, a pure function of the ``[2]`` int ``seed``."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_normal(shape, seed, dtype=tf.float32)
    import jax

    return jax.random.normal(_jax_key(seed), tuple(shape), "float32")


__all__ = ["SUPPORTED", "backend", "gradient_and_aux", "stateless_normal", "stateless_uniform"]
