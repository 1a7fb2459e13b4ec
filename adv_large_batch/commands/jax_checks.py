"""What a training run on the JAX backend cannot do, refused before any work.

``backend_problem(run, backend)`` names the first flag of ``run`` that the Keras backend
``backend`` cannot honour (None: all fine); ``RunConfig.__post_init__`` raises it as a
``ConfigError`` (exit status 2), so a bad flag never waits for a model build.

On JAX (``keras.config.backend() == "jax"``):

* a command whose config says ``runs_on_jax = False`` (``train-images``) is refused;
* ``--strategy`` horovod / mirrored / tpu / multiworker are TensorFlow distribution
  strategies: refused, with ``jax_distribution.JAX_ALTERNATIVE`` (auto and single are fine:
  ``get_jax_backend()``, DataParallel over the local devices when there are several);
* ``--precision mixed_float16`` needs a loss-scaled optimizer the JAX trainer does not
  run: refused, naming ``mixed_bfloat16``;
* ``--profile`` writes a TensorFlow profile: refused;
* ``--logdir`` (Keras' TensorBoard callback writes with ``tf.summary``) and
  ``--data-source tfds`` (tensorflow-datasets) are refused when TensorFlow cannot be
  imported in this process.

This module imports neither Keras nor TensorFlow (only ``importlib.util.find_spec``, and a
trial import of TensorFlow when a flag needs it).
"""

from __future__ import annotations

from typing import Any

from adv_large_batch.engine.strategies import TENSORFLOW_STRATEGIES


def tensorflow_importable() -> bool:
    """True when ``import tensorflow`` succeeds in this process (it may be blocked or
    absent on a JAX install)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def backend_problem(run: Any, backend: str) -> str | None:
    """The message refusing the first flag of ``run`` (a ``RunConfig``) that the Keras
    backend ``backend`` cannot run, or None.  Only ``backend == "jax"`` has any."""
    if backend != "jax":
        return None
    if not getattr(run, "runs_on_jax", True):
        return (
            "adv-large-batch train-images (ConAdv, DisAdv and the image baseline) does not run "
            "on the JAX backend yet; run it with KERAS_BACKEND=tensorflow (or --backend "
            "tensorflow)"
        )
    if run.strategy in TENSORFLOW_STRATEGIES:
        from adv_large_batch.engine.jax_distribution import JAX_ALTERNATIVE

        return (
            f"--strategy {run.strategy} is a TensorFlow distribution strategy and does not "
            f"run on the JAX backend (KERAS_BACKEND=jax); {JAX_ALTERNATIVE}"
        )
    if run.precision == "mixed_float16":
        return (
            "--precision mixed_float16 needs a loss-scaled optimizer, which the JAX trainer "
            "does not run; use --precision mixed_bfloat16 (no loss scale needed) or float32"
        )
    if run.profile:
        return (
            "--profile writes a TensorFlow profile and is not available on the JAX backend; "
            "profile a JAX run with jax.profiler (or drop --profile)"
        )
    if run.logdir is not None and not tensorflow_importable():
        return (
            f"--logdir {run.logdir}: TensorBoard logging (keras.callbacks.TensorBoard) needs "
            "TensorFlow, which cannot be imported here; drop --logdir on the JAX backend "
            "(--metrics-out keeps the metrics) or install TensorFlow"
        )
    if getattr(run, "data_source", None) == "tfds" and not tensorflow_importable():
        return (
            "--data-source tfds needs tensorflow-datasets (and TensorFlow), which cannot be "
            "imported here; use --data-source tsv with --data-dir on the JAX backend"
        )
    return None


__all__ = ["backend_problem", "tensorflow_importable"]
