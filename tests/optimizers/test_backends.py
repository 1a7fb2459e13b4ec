"""The optimizers are one copy of backend-neutral math (``keras.ops``): the same five steps
on the TensorFlow and the JAX backend give the same weights, and on JAX nothing imports
TensorFlow.  Each backend runs in its own process (a Keras process has one backend)."""

from __future__ import annotations

import numpy as np

from tests.processes import arrays_on_backend


def steps_on(backend: str, out, *flags: str) -> dict[str, np.ndarray]:
    return arrays_on_backend(backend, "optimizer_steps.py", out, *flags)


def test_lamb_lars_adamw_and_sgd_step_alike_on_tensorflow_and_jax(tmp_path):
    tf_steps = steps_on("tensorflow", tmp_path / "tf.npz")
    jax_steps = steps_on("jax", tmp_path / "jax.npz", "--no-tensorflow")
    assert (str(tf_steps.pop("backend")), str(jax_steps.pop("backend"))) == ("tensorflow", "jax")
    assert sorted(tf_steps) == sorted(jax_steps)
    assert len(tf_steps) == 4 * 5 * 4  # optimizers x steps x variables
    moved = 0
    for key, value in tf_steps.items():
        np.testing.assert_allclose(jax_steps[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
        moved += key.split("/")[1] == "0" and not np.allclose(
            value, tf_steps[key.replace("/0/", "/4/")]
        )
    assert moved == 16  # every variable changed over the five steps, on every optimizer
