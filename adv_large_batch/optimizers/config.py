"""Optimizer flags and the factory the trainers call (ScaLA §3.1, "Outer Minimization
via Groupwise Adaptive Learning Rates", and appendix B/C for the defaults; ConAdv §4.1
for LARS, whose trainer passes its own values: ``OptimizerConfig(optimizer="lars", ...)``).

``--lr`` is the learning rate tuned at ``--base-batch-size``; ``build_optimizer``
maps it to the global batch with ``--lr-scaling`` and wraps it in ``--schedule``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import keras

from adv_large_batch.flags import ConfigError, cli_field, require
from adv_large_batch.optimizers.lamb import LAMB
from adv_large_batch.optimizers.lars import LARS
from adv_large_batch.optimizers.param_groups import (
    DEFAULT_NO_ADAPT_PATTERNS,
    DEFAULT_NO_DECAY_PATTERNS,
    PathDecayAdamW,
    PathDecaySGD,
)
from adv_large_batch.optimizers.schedules import (
    LR_SCALING_RULES,
    WarmupLinearDecay,
    WarmupPolynomialDecay,
    scale_learning_rate,
)

SCHEDULES = ("warmup_linear", "warmup_poly", "constant")


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
OPTIMIZERS = tuple(OPTIMIZERS_BY_NAME)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Validated optimizer, learning-rate and parameter-group settings.

    ```python
    config = OptimizerConfig(optimizer="lamb", lr=5e-5, base_batch_size=32)
    optimizer = build_optimizer(config, total_steps=1000, global_batch_size=1024)
    # peak LR 5e-5 * sqrt(1024 / 32) = 2.83e-4, 100 warm-up steps, linear decay to 0
    ```

    Defaults are for BERT fine-tuning with LAMB as in ScaLA: appendix C recommends
    sqrt scaling from a small-batch LR, and the large-batch grid of appendix B
    (5.6e-5 ... 1e-3 at batch 1K) is exactly the small-batch grid (1e-5 ... 3e-4 at
    batch 32) times sqrt(1024 / 32); 5e-5 at 32 is BERT's usual fine-tuning LR and
    becomes 2.83e-4 at 1K, inside that grid. Weight decay 0.01, betas (0.9, 0.999) and
    eps 1e-6 are BERT's/LAMB's; L = 0, U = 10 and warm-up ratio 0.1 with linear decay
    are ScaLA's (§3.1, appendix B). LARS values (momentum 0.9, eta 0.001, poly power 2)
    are the LARS paper's / MLPerf ResNet-50's.
    """

    optimizer: str = cli_field(
        "lamb", "--optimizer", "optimizer for the outer minimization", OPTIMIZERS
    )
    lr: float | None = cli_field(
        5e-5,
        "--lr",
        "peak learning rate at --base-batch-size (before scaling); train-images without "
        "--lr: the published LARS recipe for the global batch (optimizers/recipes.py)",
    )
    lr_scaling: str = cli_field(
        "sqrt", "--lr-scaling", "rule mapping --lr to the global batch size", LR_SCALING_RULES
    )
    base_batch_size: int = cli_field(32, "--base-batch-size", "batch size at which --lr was tuned")
    weight_decay: float = cli_field(
        0.01, "--weight-decay", "decoupled weight decay (adam: must be 0, use adamw)"
    )
    beta1: float = cli_field(0.9, "--beta1", "Adam/LAMB first-moment decay")
    beta2: float = cli_field(0.999, "--beta2", "Adam/LAMB second-moment decay")
    adam_epsilon: float = cli_field(1e-6, "--adam-epsilon", "Adam/LAMB epsilon")
    lamb_bias_correction: bool = cli_field(
        True, "--lamb-bias-correction", "LAMB: bias-correct the Adam moments"
    )
    trust_clip_lower: float = cli_field(
        0.0, "--trust-clip-lower", "LAMB: L of nu(c) = max(L, min(c, U)) on the weight norm"
    )
    trust_clip_upper: float = cli_field(
        10.0, "--trust-clip-upper", "LAMB: U of nu(c) on the weight norm; inf = no clip"
    )
    trust_ratio_min: float | None = cli_field(
        None, "--trust-ratio-min", "LAMB/LARS: lower clip of the trust ratio (default: off)"
    )
    trust_ratio_max: float | None = cli_field(
        None, "--trust-ratio-max", "LAMB/LARS: upper clip of the trust ratio (default: off)"
    )
    momentum: float = cli_field(0.9, "--momentum", "LARS/SGD momentum")
    nesterov: bool = cli_field(False, "--nesterov", "LARS/SGD: Nesterov momentum")
    lars_eta: float = cli_field(0.001, "--lars-eta", "LARS trust coefficient eta")
    schedule: str = cli_field("warmup_linear", "--schedule", "learning-rate schedule", SCHEDULES)
    warmup_ratio: float = cli_field(
        0.1, "--warmup-ratio", "warm-up length as a fraction of all steps"
    )
    warmup_steps: int | None = cli_field(
        None, "--warmup-steps", "warm-up length in optimizer steps; overrides --warmup-ratio"
    )
    poly_power: float = cli_field(2.0, "--poly-power", "power of the warmup_poly decay")
    end_lr: float = cli_field(
        0.0, "--end-lr", "learning rate at the end of the warmup_poly decay (MLPerf LARS: 1e-4)"
    )
    no_decay_pattern: tuple[str, ...] = cli_field(
        DEFAULT_NO_DECAY_PATTERNS,
        "--no-decay-pattern",
        "regexes searched in variable paths that get no weight decay (none: pass the flag alone)",
        nargs="*",
    )
    no_adapt_pattern: tuple[str, ...] = cli_field(
        DEFAULT_NO_ADAPT_PATTERNS,
        "--no-adapt-pattern",
        "regexes searched in variable paths that get no layer adaptation (LAMB/LARS)",
        nargs="*",
    )
    log_trust_ratios: bool = cli_field(
        False, "--log-trust-ratios", "LAMB/LARS: keep per-variable trust ratios for TensorBoard"
    )

    def __post_init__(self) -> None:
        # Long on purpose: one check per flag, each naming the flag and what is allowed,
        # read top to bottom in the order of the fields above.
        require(
            self.optimizer in OPTIMIZERS,
            f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
        )
        require(
            not self.log_trust_ratios or self.optimizer in ("lamb", "lars"),
            f"--log-trust-ratios needs --optimizer lamb or lars, got {self.optimizer!r}",
        )
        require(
            self.lr_scaling in LR_SCALING_RULES,
            f"--lr-scaling must be one of {LR_SCALING_RULES}, got {self.lr_scaling!r}",
        )
        require(
            self.schedule in SCHEDULES,
            f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}",
        )
        require(
            self.lr is None or (_finite(self.lr) and self.lr > 0),
            f"--lr must be a number > 0, got {self.lr}",
        )
        require(
            _finite(self.end_lr) and self.end_lr >= 0, f"--end-lr must be >= 0, got {self.end_lr}"
        )
        require(
            self.base_batch_size >= 1, f"--base-batch-size must be >= 1, got {self.base_batch_size}"
        )
        require(
            _finite(self.weight_decay) and self.weight_decay >= 0,
            f"--weight-decay must be >= 0, got {self.weight_decay}",
        )
        require(
            not (self.optimizer == "adam" and self.weight_decay > 0),
            f"--weight-decay {self.weight_decay} has no effect with --optimizer adam; "
            "pass --weight-decay 0, or use --optimizer adamw for decoupled weight decay",
        )
        for flag, value in (
            ("--beta1", self.beta1),
            ("--beta2", self.beta2),
            ("--momentum", self.momentum),
        ):
            require(_finite(value) and 0 <= value < 1, f"{flag} must be in [0, 1), got {value}")
        require(
            _finite(self.adam_epsilon) and self.adam_epsilon > 0,
            f"--adam-epsilon must be > 0, got {self.adam_epsilon}",
        )
        require(
            _finite(self.trust_clip_lower) and self.trust_clip_lower >= 0,
            f"--trust-clip-lower must be >= 0, got {self.trust_clip_lower}",
        )
        require(
            self.trust_clip_upper == self.trust_clip_upper and self.trust_clip_upper > 0,
            f"--trust-clip-upper must be > 0 (inf = no clip), got {self.trust_clip_upper}",
        )
        require(
            self.trust_clip_lower <= self.trust_clip_upper,
            f"--trust-clip-lower (L={self.trust_clip_lower}) must be <= --trust-clip-upper "
            f"(U={self.trust_clip_upper})",
        )
        for flag, value in (
            ("--trust-ratio-min", self.trust_ratio_min),
            ("--trust-ratio-max", self.trust_ratio_max),
        ):
            require(
                value is None or (_finite(value) and value >= 0),
                f"{flag} must be >= 0 or unset, got {value}",
            )
        require(
            self.trust_ratio_min is None
            or self.trust_ratio_max is None
            or self.trust_ratio_min <= self.trust_ratio_max,
            f"--trust-ratio-min ({self.trust_ratio_min}) must be <= --trust-ratio-max "
            f"({self.trust_ratio_max})",
        )
        require(
            _finite(self.lars_eta) and self.lars_eta > 0,
            f"--lars-eta must be > 0, got {self.lars_eta}",
        )
        require(
            _finite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
            f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}",
        )
        require(
            self.warmup_steps is None or self.warmup_steps >= 0,
            f"--warmup-steps must be >= 0 or unset, got {self.warmup_steps}",
        )
        require(
            _finite(self.poly_power) and self.poly_power > 0,
            f"--poly-power must be > 0, got {self.poly_power}",
        )
        for flag, patterns in (
            ("--no-decay-pattern", self.no_decay_pattern),
            ("--no-adapt-pattern", self.no_adapt_pattern),
        ):
            require(
                not isinstance(patterns, str),
                f"{flag} must be a list of regular expressions, got the string {patterns!r}",
            )
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as error:
                    raise ConfigError(
                        f"{flag} {pattern!r} is not a valid regular expression ({error}); "
                        "patterns are Python regexes searched in variable paths such as "
                        "'transformer_layer_0/self_attention_layer_norm/gamma'"
                    ) from None
        # A list from argparse or JSON: store a tuple so the config stays hashable.
        object.__setattr__(self, "no_decay_pattern", tuple(self.no_decay_pattern))
        object.__setattr__(self, "no_adapt_pattern", tuple(self.no_adapt_pattern))

    def warmup_steps_for(self, total_steps: int) -> int:
        """``--warmup-steps`` if set, else ``ceil(--warmup-ratio * total_steps)``."""
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return math.ceil(self.warmup_ratio * total_steps)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


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
