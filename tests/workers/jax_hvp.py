"""Hessian-vector products on the JAX backend in float64 (``jax_enable_x64``):
``python tests/workers/jax_hvp.py OUT.npz [--no-tensorflow]``.

For ``tests/commands/test_sharpness.py``, which compares them with TensorFlow's double
backprop on the same network and with the exact answer:

* ``network/*``: a tiny Keras regressor (Dense 3 -> 5 sigmoid -> 1, float64, mean squared
  error; not tanh: Keras' ``ops.tanh`` on JAX returns float32 for a float64 input) and
  ``sharpness.network_hvp`` (``jax.jvp`` of ``jax.grad`` through ``stateless_call``): the
  weights (``network/w<i>``), batch, direction and ``H v``;
* ``quadratic/*``: ``make_jax_hvp`` of ``0.5 x^T A x`` with ``A`` passed as data, whose
  ``H v`` is ``A v``.

``--no-tensorflow`` makes importing TensorFlow fail.
"""

from __future__ import annotations

import sys


def main(out: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64

    import keras
    import numpy as np

    from adv_large_batch.sharpness import make_jax_hvp, network_hvp

    assert keras.config.backend() == "jax", keras.config.backend()
    rng = np.random.default_rng(0)
    net = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(5, activation="sigmoid", dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    net.set_weights([rng.standard_normal(tuple(w.shape)) for w in net.weights])
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    v = [rng.standard_normal(tuple(w.shape)) for w in net.trainable_variables]
    hv = network_hvp(net, keras.losses.MeanSquaredError(dtype="float64"), x, y)(v)
    results = {"network/x": x, "network/y": y}
    for i, w in enumerate(net.trainable_variables):
        results.update({f"network/w{i}": np.asarray(w.value), f"network/v{i}": v[i]})
        results[f"network/hv{i}"] = np.asarray(hv[i])

    m = rng.standard_normal((6, 6))
    a = m + m.T
    x0, direction = rng.standard_normal(6), rng.standard_normal(6)
    hvp = make_jax_hvp(lambda w, mat: 0.5 * w[0] @ mat @ w[0], [x0], a)
    results.update({"quadratic/a": a, "quadratic/v": direction})
    results["quadratic/hv"] = np.asarray(hvp([direction])[0])
    results["tensorflow_imported"] = np.array("tensorflow" in sys.modules)
    np.savez(out, **results)


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        import no_tensorflow  # tests/workers/, this script's folder

        no_tensorflow.block()
    main(sys.argv[1])
