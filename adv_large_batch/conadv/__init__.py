"""ConAdv: concurrent adversarial learning for large-batch image training.

Paper: Y. Liu, X. Chen, M. Cheng, C.-J. Hsieh, Y. You, "Concurrent Adversarial Learning
for Large-Batch Training", ICLR 2022, arXiv:2106.00221 (§3.2 DisAdv, §3.3 ConAdv, eq. 2-5).

* ``config``: ``ConAdvConfig``, the method's knobs (and flags);
* ``pgd``: the attack as pure functions (random start, sign step, projection; the
  shared pass's FGSM from the clean point);
* ``pairing``: ``pair_with_future``, batches t and t + tau from one pass over the data;
* ``trainer``: ``ConAdv``, the three schedules' ``train_step`` (DisAdv, separate, shared);
* ``buffers``: ``WorkerBuffers``, each worker's own adversarial buffer across checkpoints.
"""

from adv_large_batch.conadv.config import ATTACK_PASSES, METHODS, ConAdvConfig
from adv_large_batch.conadv.pairing import IMAGES, NEXT_IMAGES, NEXT_LABELS, pair_with_future
from adv_large_batch.conadv.trainer import ConAdv, mean_cross_entropy

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
