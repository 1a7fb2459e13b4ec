"""ScaLA: large-batch fine-tuning with PGA-K perturbation of the token embeddings.

Paper: M. Zhang, N. Uma Naresh, Y. He, "ScaLA: Speeding-Up Fine-tuning of Pre-trained
Transformer Networks via Efficient and Scalable Adversarial Perturbation" (ICLR 2022
submission, openreview.net/forum?id=KFUWHgRYEDF), revised as arXiv:2201.12469 ("ScaLA:
Accelerating Adaptation of Pre-Trained Transformer-Based Language Models via Efficient
Large-Batch Adversarial Noise").  Section, algorithm and figure numbers in this library
are the ICLR submission's (Algorithm 1, §3.1, appendix B).

* ``config``: ``ScaLAConfig``, the method's knobs (and flags);
* ``perturbation``: the inner maximisation as pure functions (random start, ascent
  step, projection, symmetric KL);
* ``trainer``: ``ScaLA``, the ``train_step`` (an ``AccumulatingTrainer``);
* ``injection``: ``DelayedInjection``, t_s.

* ``objective``: the adversarial term of a micro-batch, one copy for both shells;
* ``method``: ``ScaLAMethod``, what the two ``ScaLA`` shells share (knobs, t_s, logs).

The config and the math import on any Keras backend; ``ScaLA`` is the shell of the
process's backend: ``trainer`` (TensorFlow) or ``jax_trainer`` (JAX), imported here
(which registers it for ``keras.models.load_model``).
"""

from typing import Any

import keras

from adv_large_batch.scala.config import DROPOUT_MODES, METHODS, RADII, ScaLAConfig
from adv_large_batch.scala.injection import DelayedInjection

_TRAINER_NAMES = ("ScaLA", "sort_by_length")
if keras.config.backend() == "tensorflow":
    from adv_large_batch.scala.trainer import ScaLA, sort_by_length
elif keras.config.backend() == "jax":
    from adv_large_batch.scala.jax_trainer import ScaLA, sort_by_length


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from adv_large_batch.scala import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'adv_large_batch.scala' has no attribute {name!r}")


__all__ = [
    "DROPOUT_MODES",
    "DelayedInjection",
    "METHODS",
    "RADII",
    "ScaLA",
    "ScaLAConfig",
    "sort_by_length",
]
