"""The adversarial knobs of ScaLA (defaults: appendix B of the paper)."""

from __future__ import annotations

import dataclasses

from adv_large_batch.flags import check_declared, cli_field
from adv_large_batch.scala import perturbation

METHODS = ("baseline", "scala", "gaussian", "rdrop")


DROPOUT_MODES = ("independent", "shared")


RADII = ("absolute", "relative")


@dataclasses.dataclass(frozen=True)
class ScaLAConfig:
    """The adversarial knobs of ScaLA (defaults: appendix B of the paper)."""

    method: str = cli_field(
        "scala",
        "--method",
        "baseline: no perturbation; scala: PGA-K ascent on the embeddings; "
        "gaussian: Gaussian noise instead of the ascent (the paper's ablation); "
        "rdrop: the regulariser between two dropout passes of the same input, no "
        "perturbation (R-Drop-like; what ScaLA's r mostly is at eps 1e-5)",
        METHODS,
    )
    adv_target: str = cli_field(
        "probs",
        "--adv-target",
        "probs: KL against the model's own detached probabilities (LP); labels: ground truth (GT)",
        ("probs", "labels"),
    )
    eps: float = cli_field(
        1e-5, "--adv-eps", "l-inf radius omega of the perturbation", bounds="(0, inf)"
    )
    step_size: float = cli_field(1e-4, "--adv-step", "ascent step size rho", bounds="(0, inf)")
    steps: int = cli_field(
        1, "--adv-steps", "K, the number of ascent steps (PGA-K)", bounds="[1, inf)"
    )
    weight: float = cli_field(
        1.0, "--adv-lambda", "lambda, the weight of the regulariser r", bounds="(0, inf)"
    )
    start_epoch: int = cli_field(
        0,
        "--adv-start-epoch",
        "t_s, the paper's 1-based epoch: the perturbation is on in epochs t >= t_s of 1..T "
        "(0 or 1 = from the start; t_s = 3 of 6 = epochs 3-6)",
        bounds="[0, inf)",
    )
    start_step: int | None = cli_field(
        None,
        "--adv-start-step",
        "t_s in optimizer steps instead of epochs (overrides the epoch)",
        bounds="[0, inf)",
    )
    step_norm: str = cli_field(
        "linf",
        "--adv-step-norm",
        "ascent direction: none = raw gradient (paper), linf = gradient / per-example "
        "max-abs (SMART), l2 = gradient / per-example l2 norm (FreeLB)",
        perturbation.STEP_NORMS,
    )
    init: str = cli_field("uniform", "--adv-init", "random start y0", perturbation.START_KINDS)
    noise_scale: float | None = cli_field(
        None,
        "--adv-noise-scale",
        "stddev of a normal start / the Gaussian method (default eps)",
        bounds="(0, inf)",
    )
    dropout: str = cli_field(
        "independent",
        "--adv-dropout",
        "dropout masks of the clean, ascent and adversarial passes: independent (the "
        "paper, SMART: each pass draws its own, so r also measures mask disagreement) or "
        "shared (one mask for all passes of a micro-batch: r measures the perturbation only)",
        DROPOUT_MODES,
    )
    radius: str = cli_field(
        "absolute",
        "--adv-radius",
        "absolute: --adv-eps/--adv-step/--adv-noise-scale are values (the paper); relative: "
        "they are multiples of each example's token-embedding RMS (FreeLB-like magnitudes)",
        RADII,
    )

    def __post_init__(self) -> None:
        check_declared(self)  # every knob is range- or choice-checked alone

    @property
    def perturbs(self) -> bool:
        return self.method != "baseline"
