"""The optimizer factory the trainers call: ``OptimizerConfig`` (the flags, ``config.py``)
-> the Keras optimizer with its learning-rate schedule (ScaLA §3.1 and appendix B/C;
ConAdv §4.1 for LARS).

``--lr`` is the learning rate tuned at ``--base-batch-size``; ``build_optimizer`` maps it
to the global batch with ``--lr-scaling`` and wraps it in ``--schedule``.

```python
from adv_large_batch.optimizers import OptimizerConfig, build_optimizer, build_schedule

config = OptimizerConfig(optimizer="lamb", lr=5e-5, base_batch_size=32)
optimizer = build_optimizer(config, total_steps=1000, global_batch_size=1024)
# peak LR 5e-5 * sqrt(1024 / 32) = 2.83e-4, 100 warm-up steps, linear decay to 0
schedule = build_schedule(config, 2.83e-4, total_steps=1000)
assert abs(float(schedule(100)) - 2.83e-4) < 1e-9
```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras

from adv_large_batch.flags import require
from adv_large_batch.optimizers.config import OptimizerConfig
from adv_large_batch.optimizers.lamb import LAMB
from adv_large_batch.optimizers.lars import LARS
from adv_large_batch.optimizers.param_groups import PathDecayAdamW, PathDecaySGD
from adv_large_batch.optimizers.schedules import (
    WarmupLinearDecay,
    WarmupPolynomialDecay,
    scale_learning_rate,
)


def _layerwise_args(config: OptimizerConfig) -> dict[str, Any]:
    return {
        "weight_decay": config.weight_decay,
        "no_decay_patterns": config.no_decay_pattern,
        "no_adapt_patterns": config.no_adapt_pattern,
        "trust_ratio_min": config.trust_ratio_min,
        "trust_ratio_max": config.trust_ratio_max,
        "log_trust_ratios": config.log_trust_ratios,
    }


def _lamb(config: OptimizerConfig, learning_rate: Any) -> keras.optimizers.Optimizer:
    upper = None if math.isinf(config.trust_clip_upper) else config.trust_clip_upper
    return LAMB(
        learning_rate,
        beta_1=config.beta1,
        beta_2=config.beta2,
        epsilon=config.adam_epsilon,
        bias_correction=config.lamb_bias_correction,
        weight_norm_lower=config.trust_clip_lower,
        weight_norm_upper=upper,
        **_layerwise_args(config),
    )


def _lars(config: OptimizerConfig, learning_rate: Any) -> keras.optimizers.Optimizer:
    return LARS(
        learning_rate,
        momentum=config.momentum,
        eta=config.lars_eta,
        nesterov=config.nesterov,
        **_layerwise_args(config),
    )


def _adamw(config: OptimizerConfig, learning_rate: Any) -> keras.optimizers.Optimizer:
    return PathDecayAdamW(
        learning_rate,
        weight_decay=config.weight_decay,
        beta_1=config.beta1,
        beta_2=config.beta2,
        epsilon=config.adam_epsilon,
        no_decay_patterns=config.no_decay_pattern,
    )


def _sgd(config: OptimizerConfig, learning_rate: Any) -> keras.optimizers.Optimizer:
    return PathDecaySGD(
        learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay or None,
        no_decay_patterns=config.no_decay_pattern,
    )


def _adam(config: OptimizerConfig, learning_rate: Any) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(
        learning_rate, beta_1=config.beta1, beta_2=config.beta2, epsilon=config.adam_epsilon
    )


#: ``--optimizer``: name -> builder(config, learning rate or schedule).
OPTIMIZERS_BY_NAME: dict[str, Callable[[OptimizerConfig, Any], keras.optimizers.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "lamb": _lamb,
    "lars": _lars,
    "sgd": _sgd,
}


def build_schedule(
    config: OptimizerConfig, peak_learning_rate: float, total_steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The ``--schedule`` around ``peak_learning_rate`` (a float for ``constant``)."""
    if config.schedule == "constant":
        return float(peak_learning_rate)
    warmup = config.warmup_steps_for(total_steps)
    require(
        warmup <= total_steps,
        f"--warmup-steps {warmup} is longer than training ({total_steps} optimizer steps); "
        f"the warm-up must be at most the total number of steps",
    )
    if config.schedule == "warmup_linear":
        return WarmupLinearDecay(peak_learning_rate, total_steps, warmup)
    require(
        config.end_lr <= peak_learning_rate,
        f"--end-lr {config.end_lr} is above the peak learning rate {peak_learning_rate:g}",
    )
    return WarmupPolynomialDecay(
        peak_learning_rate,
        total_steps,
        warmup,
        power=config.poly_power,
        end_learning_rate=config.end_lr,
    )


def build_optimizer(
    config: OptimizerConfig, total_steps: int, global_batch_size: int
) -> keras.optimizers.Optimizer:
    """The optimizer described by ``config`` for a run of ``total_steps`` optimizer
    updates at ``global_batch_size`` examples per update (all workers, all
    accumulation micro-batches)."""
    require(
        isinstance(total_steps, int) and total_steps >= 1,
        f"total_steps must be an integer >= 1, got {total_steps!r}",
    )
    require(
        isinstance(global_batch_size, int) and global_batch_size >= 1,
        f"global_batch_size must be an integer >= 1, got {global_batch_size!r}",
    )
    require(
        config.lr is not None,
        f"--lr is required for --optimizer {config.optimizer} (only train-images' LARS has a "
        "recipe default)",
    )
    peak = scale_learning_rate(
        config.lr, global_batch_size, config.base_batch_size, config.lr_scaling
    )
    learning_rate = build_schedule(config, peak, total_steps)
    return OPTIMIZERS_BY_NAME[config.optimizer](config, learning_rate)
