"""The ``adv-large-batch`` command line.

Subcommands: ``info`` (installation report), ``finetune`` (ScaLA / baseline
fine-tuning of a BERT-family encoder), ``train-images`` (ConAdv / DisAdv /
baseline image training) and ``sharpness`` (top Hessian eigenvalue of a
checkpoint's training loss).  Every flag comes from a config
dataclass (``adv_large_batch.config``); bad values exit with status 2 and a
message naming the value before TensorFlow does any work.

Exit status (what a launcher, ``horovodrun`` or a scheduler sees):

* 0 (``EXIT_OK``): the command finished;
* 2 (``EXIT_BAD_INPUT``): a bad flag value, a missing file or folder, no intact
  checkpoint to resume from; nothing was trained;
* 3 (``EXIT_NONFINITE``): training stopped at a non-finite loss/gradient
  (``--on-nonfinite stop``); the newest checkpoint is from before that step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from adv_large_batch import __version__
from adv_large_batch.config import ConfigError, add_arguments, add_deprecated_alias, from_args

EXIT_OK, EXIT_BAD_INPUT, EXIT_NONFINITE = 0, 2, 3


def _status(result: dict) -> int:
    """The exit status of a training command's result."""
    return EXIT_NONFINITE if result.get("stopped_nonfinite_at") is not None else EXIT_OK


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    from adv_large_batch.commands.finetune import FinetuneConfig
    from adv_large_batch.commands.sharpness import SharpnessConfig
    from adv_large_batch.commands.train_images import IMAGE_OPTIMIZER_DEFAULTS, ImageTrainConfig
    from adv_large_batch.conadv import ConAdvConfig
    from adv_large_batch.optimizers import OptimizerConfig
    from adv_large_batch.scala import ScaLAConfig

    parser = argparse.ArgumentParser(
        prog="adv-large-batch",
        description="Large-batch training with adversarial perturbation (ScaLA, ConAdv).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser("info", help="versions, devices, Horovod build, bundled data")
    info.add_argument("--json", action="store_true", help="print the report as JSON")

    ft = sub.add_parser(
        "finetune",
        help="fine-tune a BERT-family encoder (ScaLA, baseline or Gaussian noise)",
        description="Fine-tune a BERT-family encoder on a GLUE-style task with ScaLA.",
    )
    add_arguments(ft, FinetuneConfig, "run")
    add_arguments(ft, ScaLAConfig, "adversarial perturbation (ScaLA)")
    add_arguments(ft, OptimizerConfig, "optimizer and learning rate")

    img = sub.add_parser(
        "train-images",
        help="train an image classifier (ConAdv, DisAdv or baseline) with LARS",
        description="Large-batch image training with concurrent adversarial learning (ConAdv).",
    )
    add_arguments(img, ImageTrainConfig, "run")
    add_deprecated_alias(img, "--dtype-policy", "--precision")  # the flag's old name
    add_arguments(img, ConAdvConfig, "adversarial examples (ConAdv / DisAdv)")
    add_arguments(img, OptimizerConfig, "optimizer and learning rate (LARS for images)")
    img.set_defaults(**IMAGE_OPTIMIZER_DEFAULTS)  # same flags, image defaults

    sharp = sub.add_parser(
        "sharpness",
        help="top Hessian eigenvalue of a checkpoint's training loss (power iteration)",
        description="Sharpness of a finetune / train-images checkpoint: the top eigenvalue of "
        "the Hessian of the training loss (dropout off, no perturbation) with respect to the "
        "trainable weights, by power iteration on Hessian-vector products over one fixed "
        "batch of the run's training data.",
    )
    add_arguments(sharp, SharpnessConfig, "sharpness")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            from adv_large_batch.commands import info

            data = info.collect()
            print(json.dumps(data, indent=2) if args.json else info.report(data))
            return 0
        if args.command == "finetune":
            from adv_large_batch.commands import finetune
            from adv_large_batch.optimizers import OptimizerConfig
            from adv_large_batch.scala import ScaLAConfig

            run_cfg = from_args(finetune.FinetuneConfig, args)
            adv = from_args(ScaLAConfig, args)
            opt = from_args(OptimizerConfig, args)
            return _status(finetune.run(run_cfg, adv, opt))
        if args.command == "train-images":
            from adv_large_batch.commands import train_images
            from adv_large_batch.conadv import ConAdvConfig
            from adv_large_batch.optimizers import OptimizerConfig

            image_cfg = from_args(train_images.ImageTrainConfig, args)
            conadv = from_args(ConAdvConfig, args)
            opt = from_args(OptimizerConfig, args)
            return _status(train_images.run(image_cfg, conadv, opt))
        if args.command == "sharpness":
            from adv_large_batch.commands import sharpness

            sharpness.run(from_args(sharpness.SharpnessConfig, args))
            return 0
    except (ConfigError, FileNotFoundError) as exc:
        print(f"adv-large-batch {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
