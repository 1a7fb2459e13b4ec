"""ConAdv's train step is one method on both Keras backends: the TensorFlow shell
(``conadv/trainer.py``) and the JAX shell (``conadv/jax_trainer.py``, TensorFlow blocked)
give the same logs every step, the same adversarial buffer after every step (the examples
the next steps train on), and the same weights and split-BN statistics (main and
auxiliary) after 1 and 5 steps, to rtol 1e-5, for the baseline, ConAdv separate with
tau = 2 (whose first two steps are DisAdv's) and ConAdv shared, on a CIFAR ResNet-8 with
LARS and label smoothing in
micro-batches of 4; and on JAX a run checkpointed after step 3 and resumed in a fresh
model ends exactly where the uninterrupted one does (buffer included).  The random
start is fixed, each backend runs in its own process (``tests/workers/conadv_steps.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.adversarial_examples import examples_agree
from tests.processes import arrays_on_backend


@pytest.mark.slow  # two processes, four schedules and a resume (~2 min on 2 loaded cores)
def test_conadv_steps_agree_on_tensorflow_and_jax(tmp_path):
    tf_out = arrays_on_backend(
        "tensorflow", "conadv_steps.py", tmp_path / "tf.npz", str(tmp_path / "tf_ckpt")
    )
    jax_out = arrays_on_backend(
        "jax", "conadv_steps.py", tmp_path / "jax.npz", str(tmp_path / "jax_ckpt"),
        "--no-tensorflow",
    )  # fmt: skip
    assert (str(tf_out.pop("backend")), str(jax_out.pop("backend"))) == ("tensorflow", "jax")
    timers = {k for k in tf_out if k.endswith(("/step_time_s", "/adv_time_s"))}  # TF only
    # Resume equals the uninterrupted run, exactly, on JAX (TensorFlow's resume has its
    # own tests: tests/conadv/test_conadv_resume.py).
    resumed = {k: jax_out.pop(k) for k in list(jax_out) if k.startswith("resumed/")}
    assert len(resumed) > 40 and "resumed/buffer/images" in resumed
    for key, value in resumed.items():
        whole = jax_out[key.replace("resumed/", "separate-tau2/4/")]
        np.testing.assert_array_equal(value, whole, err_msg=key)
    assert sorted(set(tf_out) - timers) == sorted(jax_out)
    apart = []
    for key in sorted(jax_out):
        atol = 5e-6 if "/4/weight/" in key else 1e-6
        if "/buffer/images" in key:  # steps of 8 / 4 px: a zero gradient's sign may differ
            same = examples_agree(jax_out[key], tf_out[key], 8 / 255)
        else:
            same = np.allclose(jax_out[key], tf_out[key], rtol=1e-5, atol=atol)
        if not same:
            worst = np.max(np.abs(jax_out[key].astype(float) - tf_out[key].astype(float)))
            apart.append(f"{key}: max |difference| {worst:.3g}")
    assert not apart, "\n".join(apart)
    # Not vacuous: the attacks moved the images by eps, the adversarial rows cost more
    # than the clean ones, the stale buffer is used from step tau on, the BN statistics
    # and the buffer hold data, and the weights moved.
    for name in ("separate-tau2", "shared"):
        for step in range(5):
            assert float(tf_out[f"{name}/{step}/log/perturbation_linf_px"]) == pytest.approx(8)
        assert float(tf_out[f"{name}/4/log/adv_loss"]) > float(tf_out[f"{name}/4/log/clean_loss"])
    stale = [float(tf_out[f"separate-tau2/{s}/log/stale_fraction"]) for s in range(5)]
    assert stale == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert [float(tf_out[f"shared/{s}/log/stale_fraction"]) for s in range(2)] == [0.0, 1.0]
    buffer = tf_out["shared/2/buffer/images"]
    assert 0.0 <= buffer.min() < buffer.max() <= 1.0
    aux = [k for k in tf_out if k.startswith("shared/4/weight/") and "aux_norm/moving_mean" in k]
    assert aux and all(np.abs(tf_out[k]).max() > 1e-3 for k in aux)
    moved = [k for k in tf_out if k.startswith("shared/4/weight/") and "kernel" in k]
    assert any(np.abs(tf_out[k] - tf_out[k.replace("/4/", "/0/")]).max() > 1e-4 for k in moved)
