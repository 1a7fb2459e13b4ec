"""ScaLA's inner maximisation is one copy in ``keras.ops``: the same inputs give the same
outputs on the TensorFlow and the JAX backend (rtol 1e-5), PGA-K included (its gradient
through ``backend_ops``: a tape on TensorFlow, ``jax.grad`` on JAX), and the JAX process
never imports TensorFlow.  Each backend runs in its own process."""

from __future__ import annotations

import numpy as np

from tests.processes import arrays_on_backend


def outputs_on(backend: str, out, *flags: str) -> dict[str, np.ndarray]:
    return arrays_on_backend(backend, "perturbation_math.py", out, *flags)


def test_perturbation_math_and_pga_agree_on_tensorflow_and_jax(tmp_path):
    tf_out = outputs_on("tensorflow", tmp_path / "tf.npz")
    jax_out = outputs_on("jax", tmp_path / "jax.npz", "--no-tensorflow")
    assert (str(tf_out.pop("backend")), str(jax_out.pop("backend"))) == ("tensorflow", "jax")
    assert sorted(tf_out) == sorted(jax_out)
    for key in sorted(tf_out):
        if key.startswith("draw/"):  # each backend's own generator: same contract, other bits
            for out in (tf_out, jax_out):
                largest, repeat, other_seed = out[key]
                assert 0 < largest <= (0.1 if key.endswith("uniform") else 1.0), key
                assert repeat == 0 and other_seed > 0, key
            continue
        np.testing.assert_allclose(jax_out[key], tf_out[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for kind in ("probs", "labels", "regression"):  # the ascent moved y, within the ball
        y1 = tf_out[f"pga/{kind}/none/1/y"]
        assert np.abs(y1).max() <= 2e-2 + 1e-7 and tf_out[f"pga/{kind}/none/3/r0"] > 0
        assert not np.allclose(y1, tf_out[f"pga/{kind}/none/3/y"]), kind
