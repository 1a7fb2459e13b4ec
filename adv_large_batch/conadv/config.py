"""The adversarial knobs of ConAdv / DisAdv (defaults: §4.1 and Table 4)."""

from __future__ import annotations

import dataclasses

from adv_large_batch.conadv import pgd
from adv_large_batch.flags import check_declared, cli_field, require

METHODS = ("baseline", "disadv", "conadv")


ATTACK_PASSES = ("separate", "shared")


#: ``--adv-eps`` / ``--adv-step``: pixels out of ``pgd.PIXEL_SCALE``.
PIXEL_BOUNDS = f"[0, {pgd.PIXEL_SCALE:g}] pixels"


@dataclasses.dataclass(frozen=True)
class ConAdvConfig:
    """The adversarial knobs of ConAdv / DisAdv (defaults: §4.1 and Table 4)."""

    method: str = cli_field(
        "conadv",
        "--method",
        "baseline: clean loss only; disadv: attack with the current weights, then update "
        "(two sequential gradient computations); conadv: the update uses adversarial "
        "examples made --staleness steps earlier",
        METHODS,
    )
    eps: float = cli_field(
        3.0,
        "--adv-eps",
        "l-inf radius of the perturbation, in pixels out of 255 (Table 4's p)",
        bounds=PIXEL_BOUNDS,
    )
    step_size: float | None = cli_field(
        None,
        "--adv-step",
        "PGD step in pixels out of 255 (default: --adv-eps)",
        bounds=PIXEL_BOUNDS,
    )
    steps: int = cli_field(
        1, "--adv-steps", "PGD steps (the paper always uses 1)", bounds="[1, inf)"
    )
    staleness: int = cli_field(
        1,
        "--staleness",
        "tau: adversarial examples from the weights of tau steps ago (0 = DisAdv)",
        bounds="[0, inf)",
    )
    random_init: bool = cli_field(
        True, "--adv-random-start", "start PGD at a uniform random point of the ball"
    )
    attack_pass: str = cli_field(
        "separate",
        "--attack-pass",
        "conadv: separate = the next batch's PGD is its own forward + input backward beside "
        "the update (DisAdv's FLOPs); shared = ONE forward/backward over [clean batch t+1; "
        "adversarial batch t] gives the update's weight gradient and, from the clean rows' "
        "input gradient, the FGSM examples of batch t+1 (no random start; --staleness 1)",
        ATTACK_PASSES,
    )

    def __post_init__(self) -> None:
        check_declared(self)  # each knob against its choices and bounds, then the shared pass
        if self.attack_pass == "shared":
            require(
                self.method == "conadv",
                f"--attack-pass shared is a ConAdv schedule; --method {self.method} has none",
            )
            require(
                self.staleness == 1,
                f"--attack-pass shared needs --staleness 1 (the clean rows of step t are batch "
                f"t + 1, whose input gradient makes the adversarial batch of step t + 1), got "
                f"{self.staleness}",
            )
            require(
                self.steps == 1,
                f"--attack-pass shared takes one gradient (FGSM), got --adv-steps {self.steps}",
            )

    @property
    def adversarial(self) -> bool:
        return self.method != "baseline"

    @property
    def buffered(self) -> bool:
        """True when adversarial examples are made ahead of time (ConAdv with tau >= 1)."""
        return self.method == "conadv" and self.staleness >= 1

    @property
    def shared(self) -> bool:
        """True for ConAdv's shared-pass schedule."""
        return self.buffered and self.attack_pass == "shared"

    @property
    def eps_unit(self) -> float:
        return pgd.pixels_to_unit(self.eps)

    @property
    def step_unit(self) -> float:
        return pgd.pixels_to_unit(self.eps if self.step_size is None else self.step_size)
