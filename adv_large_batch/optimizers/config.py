"""The optimizer, learning-rate and parameter-group flags (ScaLA §3.1, "Outer Minimization
via Groupwise Adaptive Learning Rates", and appendix B/C for the defaults; ConAdv §4.1
for LARS, whose trainer passes its own values: ``OptimizerConfig(optimizer="lars", ...)``).

Each flag declares its choices or range where it is declared; ``__post_init__`` checks
them (``flags.check_declared``), then the few rules between flags.  ``factory.py`` builds
the optimizer these flags describe (``build_optimizer``).
"""

from __future__ import annotations

import dataclasses
import math
import re

from adv_large_batch.flags import ConfigError, check_declared, cli_field, require
from adv_large_batch.optimizers.param_groups import (
    DEFAULT_NO_ADAPT_PATTERNS,
    DEFAULT_NO_DECAY_PATTERNS,
)
from adv_large_batch.optimizers.schedules import LR_SCALING_RULES

#: ``--optimizer`` (``factory.OPTIMIZERS_BY_NAME`` builds each).
OPTIMIZERS = ("adam", "adamw", "lamb", "lars", "sgd")
SCHEDULES = ("warmup_linear", "warmup_poly", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Validated optimizer, learning-rate and parameter-group settings.

    ```python
    from adv_large_batch.optimizers import OptimizerConfig, factory

    config = OptimizerConfig(optimizer="lamb", lr=5e-5, base_batch_size=32)
    optimizer = factory.build_optimizer(config, total_steps=1000, global_batch_size=1024)
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
        bounds="(0, inf)",
    )
    lr_scaling: str = cli_field(
        "sqrt", "--lr-scaling", "rule mapping --lr to the global batch size", LR_SCALING_RULES
    )
    base_batch_size: int = cli_field(
        32, "--base-batch-size", "batch size at which --lr was tuned", bounds="[1, inf)"
    )
    weight_decay: float = cli_field(
        0.01,
        "--weight-decay",
        "decoupled weight decay (adam: must be 0, use adamw)",
        bounds="[0, inf)",
    )
    beta1: float = cli_field(0.9, "--beta1", "Adam/LAMB first-moment decay", bounds="[0, 1)")
    beta2: float = cli_field(0.999, "--beta2", "Adam/LAMB second-moment decay", bounds="[0, 1)")
    adam_epsilon: float = cli_field(1e-6, "--adam-epsilon", "Adam/LAMB epsilon", bounds="(0, inf)")
    lamb_bias_correction: bool = cli_field(
        True, "--lamb-bias-correction", "LAMB: bias-correct the Adam moments"
    )
    trust_clip_lower: float = cli_field(
        0.0,
        "--trust-clip-lower",
        "LAMB: L of nu(c) = max(L, min(c, U)) on the weight norm",
        bounds="[0, inf)",
    )
    trust_clip_upper: float = cli_field(
        10.0,
        "--trust-clip-upper",
        "LAMB: U of nu(c) on the weight norm; inf = no clip",
        bounds="(0, inf] inf = no clip",
    )
    trust_ratio_min: float | None = cli_field(
        None,
        "--trust-ratio-min",
        "LAMB/LARS: lower clip of the trust ratio (default: off)",
        bounds="[0, inf)",
    )
    trust_ratio_max: float | None = cli_field(
        None,
        "--trust-ratio-max",
        "LAMB/LARS: upper clip of the trust ratio (default: off)",
        bounds="[0, inf)",
    )
    momentum: float = cli_field(0.9, "--momentum", "LARS/SGD momentum", bounds="[0, 1)")
    nesterov: bool = cli_field(False, "--nesterov", "LARS/SGD: Nesterov momentum")
    lars_eta: float = cli_field(
        0.001, "--lars-eta", "LARS trust coefficient eta", bounds="(0, inf)"
    )
    schedule: str = cli_field("warmup_linear", "--schedule", "learning-rate schedule", SCHEDULES)
    warmup_ratio: float = cli_field(
        0.1, "--warmup-ratio", "warm-up length as a fraction of all steps", bounds="[0, 1)"
    )
    warmup_steps: int | None = cli_field(
        None,
        "--warmup-steps",
        "warm-up length in optimizer steps; overrides --warmup-ratio",
        bounds="[0, inf)",
    )
    poly_power: float = cli_field(
        2.0, "--poly-power", "power of the warmup_poly decay", bounds="(0, inf)"
    )
    end_lr: float = cli_field(
        0.0,
        "--end-lr",
        "learning rate at the end of the warmup_poly decay (MLPerf LARS: 1e-4)",
        bounds="[0, inf)",
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
        check_declared(self)  # each flag against its choices and bounds, then the rules between
        require(
            not self.log_trust_ratios or self.optimizer in ("lamb", "lars"),
            f"--log-trust-ratios needs --optimizer lamb or lars, got {self.optimizer!r}",
        )
        require(
            not (self.optimizer == "adam" and self.weight_decay > 0),
            f"--weight-decay {self.weight_decay} has no effect with --optimizer adam; "
            "pass --weight-decay 0, or use --optimizer adamw for decoupled weight decay",
        )
        require(
            self.trust_clip_lower <= self.trust_clip_upper,
            f"--trust-clip-lower (L={self.trust_clip_lower}) must be <= --trust-clip-upper "
            f"(U={self.trust_clip_upper})",
        )
        require(
            self.trust_ratio_min is None
            or self.trust_ratio_max is None
            or self.trust_ratio_min <= self.trust_ratio_max,
            f"--trust-ratio-min ({self.trust_ratio_min}) must be <= --trust-ratio-max "
            f"({self.trust_ratio_max})",
        )
        _check_patterns("--no-decay-pattern", self.no_decay_pattern)
        _check_patterns("--no-adapt-pattern", self.no_adapt_pattern)
        # A list from argparse or JSON: store a tuple so the config stays hashable.
        object.__setattr__(self, "no_decay_pattern", tuple(self.no_decay_pattern))
        object.__setattr__(self, "no_adapt_pattern", tuple(self.no_adapt_pattern))

    def warmup_steps_for(self, total_steps: int) -> int:
        """``--warmup-steps`` if set, else ``ceil(--warmup-ratio * total_steps)``."""
        if self.warmup_steps is not None:
            return int(self.warmup_steps)
        return math.ceil(self.warmup_ratio * total_steps)


def _check_patterns(flag: str, patterns: tuple[str, ...]) -> None:
    """``ConfigError`` unless ``patterns`` is a sequence of valid regular expressions."""
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
