"""What a training run on the JAX backend cannot do, refused before any work.

``backend_problem(run, backend)`` names the first flag of ``run`` that the Keras backend
``backend`` cannot honour (None: all fine); ``RunConfig.__post_init__`` raises it as a
``ConfigError`` (exit status 2), so a bad flag never waits for a model build.

On JAX (``keras.config.backend() == "jax"``):

* ``train-images``: the datasets held in memory (``image_arrays.ARRAY_DATASETS``: not
  ``imagenet2012``, read by tensorflow-datasets) and the NumPy augmentations
  (``numpy_images.NUMPY_POLICIES``) only;
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
    image_problem = _image_problem(run)
    if image_problem:
        return image_problem
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


def _image_problem(run: Any) -> str | None:
    """``train-images`` on JAX: the in-memory datasets and the NumPy augmentations only."""
    from adv_large_batch.data.image_arrays import ARRAY_DATASETS
    from adv_large_batch.data.numpy_images import NUMPY_POLICIES

    dataset, augment = getattr(run, "dataset", None), getattr(run, "augment", None)
    if dataset is not None and dataset not in ARRAY_DATASETS:
        return (
            f"--dataset {dataset} is read by tensorflow-datasets and does not run on the JAX "
            f"backend; use one of {ARRAY_DATASETS} (folder: the extracted images) or "
            "KERAS_BACKEND=tensorflow"
        )
    if augment is not None and augment not in NUMPY_POLICIES:
        return (
            f"--augment {augment} uses TensorFlow image layers and does not run on the JAX "
            f"backend; use one of {NUMPY_POLICIES} or KERAS_BACKEND=tensorflow"
        )
    return None


__all__ = ["backend_problem", "tensorflow_importable"]
