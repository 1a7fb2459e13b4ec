"""The bundled all-MiniLM-L6-v2 classifier is one model on both Keras backends: on JAX
(TensorFlow blocked) its preprocessor gives the same token ids, its logits equal the
TensorFlow backend's, and ScaLA's inner maximisation through the real network (the gradient
with respect to the token-embedding output: ``jax.grad`` on JAX, a tape on TensorFlow) gives
the same perturbation, to rtol 1e-5 (dropout off; each backend in its own process)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.processes import arrays_on_backend


def outputs_on(backend: str, out, *flags: str) -> dict[str, np.ndarray]:
    return arrays_on_backend(backend, "minilm_backends.py", out, *flags)


@pytest.mark.slow  # two processes that each load MiniLM (~25 s on 2 cores)
def test_minilm_and_scalas_ascent_through_it_agree_on_tensorflow_and_jax(tmp_path):
    tf_out = outputs_on("tensorflow", tmp_path / "tf.npz")
    jax_out = outputs_on("jax", tmp_path / "jax.npz", "--no-tensorflow")
    assert (str(tf_out.pop("backend")), str(jax_out.pop("backend"))) == ("tensorflow", "jax")
    assert sorted(tf_out) == sorted(jax_out)
    for key in ("single/token_ids", "pair/token_ids"):
        np.testing.assert_array_equal(jax_out[key], tf_out[key], err_msg=key)
    for key in sorted(tf_out):
        np.testing.assert_allclose(jax_out[key], tf_out[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # Not vacuous: the ascent moved y off y0 and raised r, on the real network.
    for norm in ("none", "linf"):
        assert tf_out[f"pga/{norm}/2/r"] > tf_out[f"pga/{norm}/1/r0"] > 0, norm
    moved = np.abs(tf_out["pga/linf/1/y"]).max()  # |y0| <= 1e-2, one l-inf step of 1e-2
    assert 1e-2 < moved <= 2e-2 + 1e-7
