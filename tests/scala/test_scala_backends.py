"""ScaLA's train step is one method on both Keras backends: the TensorFlow shell
(``scala/trainer.py``) and the JAX shell (``scala/jax_trainer.py``, TensorFlow blocked)
give the same logs every step and the same weights after 1 and 5 optimizer steps, to
rtol 1e-5, for the baseline and every ScaLA variant (probs and labels targets, PGA-1 and
PGA-2, raw and l-inf steps, the relative radius, delayed injection, regression),
with LAMB and AdamW; and a checkpoint of either backend restores exactly on the other
(the CLI's format, ``engine.checkpointing``).  Weights after 5 steps to atol 5e-6; the
attention key bias, whose gradient is zero, is not compared.  Dropout off, the random
start fixed, each backend in its own process (``tests/workers/scala_steps.py``).
Micro-batches of 4 rows of sentences of different lengths: TensorFlow trims each
micro-batch to its longest sentence, JAX keeps the padding, and the results agree."""

from __future__ import annotations

import numpy as np
import pytest

from tests.processes import arrays_on_backend


@pytest.mark.slow  # three processes, five variants (~3 min on 2 loaded cores)
def test_scala_steps_agree_on_tensorflow_and_jax(tmp_path):
    tf_ckpt, jax_ckpt = str(tmp_path / "tf_ckpt"), str(tmp_path / "jax_ckpt")
    tf_out = arrays_on_backend(
        "tensorflow", "scala_steps.py", tmp_path / "tf.npz", "--checkpoint-to", tf_ckpt
    )
    jax_out = arrays_on_backend(
        "jax", "scala_steps.py", tmp_path / "jax.npz", "--no-tensorflow",
        "--checkpoint-to", jax_ckpt, "--restore-from", tf_ckpt,
    )  # fmt: skip
    back = arrays_on_backend(  # TensorFlow, restore only: the JAX run's checkpoint
        "tensorflow", "scala_steps.py", tmp_path / "back.npz", "--variants",
        "--restore-from", jax_ckpt,
    )  # fmt: skip
    assert (str(tf_out.pop("backend")), str(jax_out.pop("backend"))) == ("tensorflow", "jax")
    # The CLI's checkpoint format carries a run across the backends both ways: every
    # weight, the optimizer's step and the batch counter, exactly.
    for source, loaded in ((tf_out, jax_out), (jax_out, back)):
        restored = {k: v for k, v in loaded.items() if k.startswith("restored/")}
        assert int(restored.pop("restored/iterations")) == 5
        assert int(restored.pop("restored/batches_seen")) == 5
        assert len(restored) > 30
        for key, value in restored.items():
            saved = source[key.replace("restored/", "baseline/lamb/4/")]
            np.testing.assert_array_equal(value, saved, err_msg=key)
    jax_out = {k: v for k, v in jax_out.items() if not k.startswith("restored/")}
    timers = {k for k in tf_out if k.endswith(("/step_time_s", "/adv_time_s"))}  # TF only
    assert sorted(set(tf_out) - timers) == sorted(jax_out)
    # The attention key bias has a gradient of exactly zero (softmax does not change when
    # every score of a query shifts by q . b_k), so its computed gradient is rounding
    # noise, which Adam / LAMB normalise into updates of size lr: not comparable.
    # After five LAMB steps the backends' different summation orders (TensorFlow trims
    # each micro-batch, JAX keeps the padding) leave entries near zero a few 1e-6 apart.
    compared = [k for k in sorted(jax_out) if not k.endswith("/key/bias")]
    assert len(compared) > 300
    apart = []
    for key in compared:
        atol = 5e-6 if "/4/weight/" in key else 1e-6
        if not np.allclose(jax_out[key], tf_out[key], rtol=1e-5, atol=atol):
            worst = np.max(np.abs(jax_out[key] - tf_out[key]))
            apart.append(f"{key}: max |difference| {worst:.3g}")
    assert not apart, "\n".join(apart)
    # Not vacuous: the perturbation is on where it should be, and it changes the loss.
    late = [float(tf_out[f"scala-late/adamw/{s}/log/adv_on"]) for s in range(5)]
    assert late == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert float(tf_out["scala-late/adamw/2/log/perturbation_linf"]) == pytest.approx(1e-1)
    assert float(tf_out["scala-late/adamw/2/log/regulariser"]) > 1e-4
    assert float(tf_out["scala-labels-k2-raw/lamb/0/log/regulariser"]) > 0.1
    assert float(tf_out["scala-relative/lamb/0/log/regulariser"]) > 1e-4
    after = [k for k in tf_out if k.startswith("scala-late/adamw/4/weight/")]
    assert after  # and the four steps between the two saves moved the weights
    assert any(np.abs(tf_out[k] - tf_out[k.replace("/4/", "/0/")]).max() > 1e-4 for k in after)
