"""The published LARS recipe for large-batch image training, as a function of the batch.

``train-images`` without ``--lr`` takes its peak learning rate and warm-up from here
(an explicit ``--lr`` still wins, scaled by ``--lr-scaling`` from ``--base-batch-size``).
The LR is LARS's global rate, which multiplies the trust ratio
``eta ||w|| / (||g|| + wd ||w||)`` with ``eta = 1e-3`` (the form of TF-models', the
MLPerf submissions' and the ConAdv authors' LARS).  Published ResNet-50 / ImageNet points
(peak LR, warm-up epochs; momentum ~0.9, polynomial decay of power 2 to 1e-4, weight
decay 5e-5 .. 1e-4, BN and bias excluded, label smoothing 0.1):

========  =================  ==================  =====================================
batch     published peak LR  warm-up epochs      sources
========  =================  ==================  =====================================
1K        5 - 6              2                   MLPerf v0.7 / v1.0 LARS submissions
2K        8.5 - 9.5          1 - 5               MLPerf
4K        10 - 13            2 - 7               MLPerf
8K        17                 5                   MLPerf
16K       22 - 26.5          5 - 9               MLPerf; ConAdv code: 25 (< 32K)
32K       31 - 34            12 - 25             MLPerf (Google TPU); ConAdv code: 31.2
64K       35 - 40.7          31 - 40             MLPerf (TPU v3-2048 / v4)
96K       43                 41 (power 1.6)      ConAdv authors (98,304, momentum 0.92)
========  =================  ==================  =====================================

(MLPerf training results v0.6-v1.1, ``lars_opt_base_learning_rate`` /
``lars_opt_learning_rate_warmup_epochs``; the ConAdv authors' ``conadv/ConAdv`` code,
its LR table by batch: 10 / 25 / 31.2 / 43.)  The rule below interpolates them smoothly:

* peak LR ``8.5 sqrt(B / 2048)`` up to 32K, then ``34 (B / 32768)^0.2`` (the published
  LRs level off above 32K; 42.4 at 96K);
* warm-up ``max(5, B / 2400)`` epochs of the dataset (about 530 steps of ImageNet above
  12K, where the published large-batch runs use 530 - 700), at most half the run;
* power 2 (every MLPerf run; ConAdv's 1.6 only reproduces its 96K run), end LR 1e-4.

The image runs' optimizer config starts from ``IMAGE_OPTIMIZER_DEFAULTS`` (the
``train-images`` defaults of the optimizer flags; ``image_optimizer_config`` from Python)
and ``resolve_recipe`` fills in this recipe for the run's batch where ``--lr`` is unset.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

from adv_large_batch.flags import require
from adv_large_batch.optimizers.config import OptimizerConfig
from adv_large_batch.optimizers.param_groups import DEFAULT_NO_DECAY_PATTERNS

#: (global batch, published peak LR range, warm-up epochs range, source): the table above.
PUBLISHED_LARS = (
    (1024, (5.0, 6.0), (2, 2), "MLPerf"),
    (2048, (8.5, 9.5), (1, 5), "MLPerf"),
    (4096, (10.0, 13.0), (2, 7), "MLPerf"),
    (8192, (17.0, 17.0), (5, 5), "MLPerf"),
    (16384, (22.0, 26.5), (5, 9), "MLPerf; ConAdv code 25"),
    (32768, (31.0, 34.0), (12, 25), "MLPerf; ConAdv code 31.2"),
    (65536, (35.0, 40.7), (31, 40), "MLPerf"),
    (98304, (43.0, 43.0), (41, 41), "ConAdv authors"),
)


@dataclasses.dataclass(frozen=True)
class LarsRecipe:
    """Peak LR, warm-up (epochs), polynomial power and end LR for one global batch."""

    global_batch: int
    peak_lr: float
    warmup_epochs: float
    power: float = 2.0
    end_lr: float = 1e-4


def lars_peak_lr(global_batch: int) -> float:
    """``8.5 sqrt(B / 2048)`` up to 32K, ``34 (B / 32768)^0.2`` above (see the module doc)."""
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    if global_batch <= 32768:
        return 8.5 * math.sqrt(global_batch / 2048)
    return 34.0 * (global_batch / 32768) ** 0.2


def lars_recipe(global_batch: int, epochs: float | None = None) -> LarsRecipe:
    """The recipe for ``global_batch``; with ``epochs`` the warm-up is at most half the run.

    ```python
    from adv_large_batch.optimizers import lars_recipe

    lars_recipe(32768)              # peak 34.0, warm-up 13.7 epochs, power 2, end 1e-4
    lars_recipe(4096, epochs=10)    # peak 12.0, warm-up 5 epochs
    ```
    """
    warmup = max(5.0, global_batch / 2400)
    if epochs is not None:
        warmup = min(warmup, 0.5 * epochs)
    return LarsRecipe(global_batch, lars_peak_lr(global_batch), warmup)


# keras.applications names its BNs "*_bn": exempt their gamma/beta like "*norm*/gamma".
_KERAS_APPLICATIONS_BN = r"(^|_)bn/(gamma|beta)$"

#: The image runs' optimizer: LARS (ConAdv §4.1) with the published large-batch recipe
#: above (MLPerf ResNet-50 LARS and the ConAdv authors' code): no ``--lr`` -> the
#: recipe's peak LR and warm-up for the global batch, momentum 0.9, polynomial (power 2)
#: decay to 1e-4 after warm-up, weight decay 5e-5, BN and bias excluded.  An explicit
#: ``--lr`` is the LR at ``--base-batch-size``, scaled by ``--lr-scaling`` (sqrt; linear
#: scaling from 256 gave 640 at 32K).  These are the ``train-images`` defaults of
#: ``OptimizerConfig``'s flags (one declaration: the CLI and ``image_optimizer_config``).
IMAGE_OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "optimizer": "lars",
    "lr": None,
    "lr_scaling": "sqrt",
    "base_batch_size": 256,
    "weight_decay": 5e-5,
    "schedule": "warmup_poly",
    "poly_power": 2.0,
    "end_lr": 1e-4,
    "no_decay_pattern": (*DEFAULT_NO_DECAY_PATTERNS, _KERAS_APPLICATIONS_BN),
    "no_adapt_pattern": (*DEFAULT_NO_DECAY_PATTERNS, _KERAS_APPLICATIONS_BN),
}


def image_optimizer_config(**overrides: Any) -> OptimizerConfig:
    """``OptimizerConfig`` with the image defaults (LARS), then ``overrides``."""
    return dataclasses.replace(OptimizerConfig(), **{**IMAGE_OPTIMIZER_DEFAULTS, **overrides})


class RecipeRun(Protocol):
    """What ``resolve_recipe`` reads of a run (``ImageTrainConfig`` has it)."""

    batch_size: int  # global
    epochs: int
    warmup_epochs: float | None  # --warmup-epochs


def resolve_recipe(
    optimizer_config: OptimizerConfig, run: RecipeRun, steps_per_epoch: int
) -> OptimizerConfig:
    """The optimizer config with the LARS recipe filled in where ``--lr`` is unset.

    No ``--lr``: the recipe's peak LR for the global batch (``--lr-scaling`` then does
    not apply) and, unless ``--warmup-epochs`` / ``--warmup-steps`` is given, its warm-up.
    ``--warmup-epochs`` always becomes ``warmup_steps``.
    """
    opt = optimizer_config
    warmup_epochs = run.warmup_epochs  # an explicit --warmup-epochs always wins
    if opt.lr is None:
        require(
            opt.optimizer == "lars",
            f"--optimizer {opt.optimizer} needs an explicit --lr (the recipe default is LARS's)",
        )
        recipe = lars_recipe(run.batch_size, run.epochs)
        opt = dataclasses.replace(
            opt, lr=recipe.peak_lr, lr_scaling="none", base_batch_size=run.batch_size
        )
        if warmup_epochs is None and opt.warmup_steps is None:
            warmup_epochs = recipe.warmup_epochs
    if warmup_epochs is not None:
        total = steps_per_epoch * run.epochs
        warmup = round(warmup_epochs * steps_per_epoch)
        opt = dataclasses.replace(opt, warmup_steps=min(total, warmup))
    return opt


__all__ = [
    "IMAGE_OPTIMIZER_DEFAULTS",
    "PUBLISHED_LARS",
    "LarsRecipe",
    "RecipeRun",
    "image_optimizer_config",
    "lars_peak_lr",
    "lars_recipe",
    "resolve_recipe",
]
