"""ConAdv: concurrent adversarial learning for large-batch image training.

Paper: Y. Liu, X. Chen, M. Cheng, C.-J. Hsieh, Y. You, "Concurrent Adversarial Learning
for Large-Batch Training", ICLR 2022, arXiv:2106.00221 (§3.2 DisAdv, §3.3 ConAdv, eq. 2-5).

* ``config``: ``ConAdvConfig``, the method's knobs (and flags);
* ``pgd``: the attack as pure, backend-neutral functions (random start, sign step,
  projection; the shared pass's FGSM from the clean point);
* ``paired_keys`` / ``pairing``: the paired element of batches t and t + tau, and
  ``pair_with_future``, which builds it with ``tf.data`` (TensorFlow only; the JAX input
  is ``data/numpy_images``);
* ``method``: ``ConAdvMethod``, what the two ``ConAdv`` shells share (knobs, logs, buffer);
* ``trainer``: ``ConAdv`` on TensorFlow, the three schedules' ``train_step``;
  ``jax_trainer``: ``ConAdv`` on JAX (the same schedules, stateless);
* ``buffers``: ``WorkerBuffers``, each worker's own adversarial buffer across checkpoints.

The config and the math import on any Keras backend; ``ConAdv`` is the shell of the
process's backend, imported here (which registers it for ``keras.models.load_model``).
"""

from typing import Any

import keras

from adv_large_batch.conadv.config import ATTACK_PASSES, METHODS, ConAdvConfig
from adv_large_batch.conadv.paired_keys import IMAGES, NEXT_IMAGES, NEXT_LABELS

if keras.config.backend() == "tensorflow":
    from adv_large_batch.conadv.pairing import pair_with_future
    from adv_large_batch.conadv.trainer import ConAdv, mean_cross_entropy
elif keras.config.backend() == "jax":
    from adv_large_batch.conadv.jax_trainer import ConAdv, mean_cross_entropy

_TENSORFLOW_ONLY = {"pair_with_future": "pairing"}


def __getattr__(name: str) -> Any:
    if name in _TENSORFLOW_ONLY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_TENSORFLOW_ONLY[name]}"), name)
    if name in ("ConAdv", "mean_cross_entropy"):
        from adv_large_batch.conadv import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'adv_large_batch.conadv' has no attribute {name!r}")


__all__ = [
    "ATTACK_PASSES",
    "IMAGES",
    "METHODS",
    "NEXT_IMAGES",
    "NEXT_LABELS",
    "ConAdv",
    "ConAdvConfig",
    "mean_cross_entropy",
    "pair_with_future",
]
