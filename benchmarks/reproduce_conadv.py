"""ConAdv's tables 1 and 3 at small scale: a small ResNet on Fashion-MNIST with LARS.

Accuracy vs global batch for baseline, DisAdv, ConAdv (no augmentation) and ConAdv
with flip-and-crop augmentation on top, every run repeated over ``--seeds``.  Each
run is ``adv_large_batch.commands.train_images.run`` (what ``adv-large-batch train-images``
runs) in this one process; records go to a JSONL log and a stopped sweep resumes.
``benchmarks/report.py`` turns the log into tables and plots.

    .venv/bin/python benchmarks/reproduce_conadv.py --log runs/repro/conadv.jsonl

Defaults sized for 2 CPU cores: 8,192 training images, the whole 10,000-image
test split, cifar_resnet8 (width 8), 4 epochs, LARS (lr 5 at batch 256, square-root
scaling, warm-up + polynomial decay), eps 3/255 1-step PGD with random start;
batches 256 (128 steps), 1,024 (32 steps) and 2,048 (16 steps).  With linear LR
scaling (seed 0, ``--lr-scaling linear``) the runs at 2,048 and 4,096 diverged
(training loss 2.4 -> 16-29, test accuracy near chance) for every method.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from repro_common import PlannedRun, add_sweep_arguments, run_sweep  # noqa: E402

# Method label -> (ConAdv --method, --augment).
METHODS: dict[str, tuple[str, str]] = {
    "baseline": ("baseline", "none"),
    "disadv": ("disadv", "none"),
    "conadv": ("conadv", "none"),
    "conadv+aug": ("conadv", "flip_crop"),
}


def plan_runs(args: argparse.Namespace) -> list[PlannedRun]:
    """Seed-major; within a seed the largest batch (what the targets compare) first."""
    return [
        PlannedRun(method, batch, seed)
        for seed in args.seeds
        for batch in sorted(args.batches, reverse=True)
        for method in args.methods
    ]


def train(args: argparse.Namespace, run: PlannedRun) -> dict[str, Any]:
    from adv_large_batch.commands import train_images
    from adv_large_batch.conadv import ConAdvConfig
    from adv_large_batch.optimizers import image_optimizer_config

    method, augment = METHODS[run.method]
    run_cfg = train_images.ImageTrainConfig(
        dataset="fashion_mnist",
        model=args.model,
        width=args.width,
        augment=augment,
        batch_size=run.batch_size,
        micro_batch_size=min(args.micro_batch_size, run.batch_size),
        epochs=args.epochs,
        train_limit=args.train_limit,
        seed=run.seed,
        verbose=0,
    )
    adv = ConAdvConfig(method=method, eps=args.eps)
    opt = image_optimizer_config(lr=args.lr, lr_scaling=args.lr_scaling)
    result = train_images.run(run_cfg, adv, opt)
    history = result["history"]
    return {
        "metric": "top1",
        "score": result["top1"],
        "wall_time_s": result["wall_time_s"],
        "steps": result["steps"],
        "images_per_s": result["images_per_s"],
        "curves": {k: history[k] for k in ("loss", "val_accuracy", "val_loss") if k in history},
    }


def main(argv: list[str] | None = None) -> int:
    from adv_large_batch.optimizers.schedules import LR_SCALING_RULES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sweep_arguments(p, "runs/repro/conadv.jsonl")
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--train-limit", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--model", default="cifar_resnet8")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=256)
    p.add_argument("--eps", type=float, default=3.0, help="PGD radius in pixels out of 255")
    p.add_argument("--lr", type=float, default=5.0, help="LARS LR at batch 256")
    p.add_argument(
        "--lr-scaling",
        default="sqrt",
        choices=LR_SCALING_RULES,
        help="LR rule from batch 256 (linear diverged at 2048 and 4096 here, see docs/results.md)",
    )
    args = p.parse_args(argv)
    return run_sweep(p, args, args.batches, lambda: plan_runs(args), lambda r: train(args, r))


if __name__ == "__main__":
    sys.exit(main())
