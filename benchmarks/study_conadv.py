"""Evidence study: does ConAdv keep small-batch accuracy at a large batch, and at what cost?

The full Fashion-MNIST training set (60,000 images; test: the 10,000 test images) with a small
split-BN ResNet (``cifar_resnet8``, width 16), LARS with the library's default recipe for the
global batch (``optimizers/recipes.py``), the same number of epochs at every batch.  Stages, in
one resumable JSONL log (``--log``; a logged run is skipped):

* ``gap``: the plain baseline at batch 256, 1K, 2K, 4K and 8K, seed 0: where does the large-batch
  gap open while the run still learns (and makes at least ~50 steps)?
* ``methods``: at ``--batch``, ``--seeds`` paired (same data order, augmentation and init per
  seed): baseline, DisAdv, ConAdv with the separate attack pass, ConAdv with the shared pass;
  and one row with augmentation (ConAdv shared + RandAugment, seed 0).

Every record holds per-epoch test accuracy, wall and CPU seconds, images/s, the host's matmul
GFLOP/s and the commit it ran on.

    .venv/bin/python benchmarks/study_conadv.py --stage gap
    .venv/bin/python benchmarks/study_conadv.py --stage methods --batch 4096 --seeds 0 1 2
    # a rerun check: one logged run again, into another log
    .venv/bin/python benchmarks/study_conadv.py --stage methods --seeds 0 --arms conadv-shared \
        --log docs/data/study_conadv_rerun.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from repro_common import PlannedRun  # noqa: E402
from study_scala import run_study  # noqa: E402

LOG = "docs/data/study_conadv.jsonl"
GAP_BATCHES = (256, 1024, 2048, 4096, 8192)
# label -> ConAdvConfig fields, augmentation
ARMS: dict[str, dict[str, Any]] = {
    "baseline": {"adv": {"method": "baseline"}},
    "disadv": {"adv": {"method": "disadv"}},
    "conadv-separate": {"adv": {"method": "conadv", "attack_pass": "separate"}},
    "conadv-shared": {"adv": {"method": "conadv", "attack_pass": "shared"}},
    "conadv-shared+randaugment": {
        "adv": {"method": "conadv", "attack_pass": "shared"},
        "augment": "randaugment",
    },
}


PAIRED_ARMS = ("baseline", "disadv", "conadv-separate", "conadv-shared")


def plan(args: argparse.Namespace) -> list[PlannedRun]:
    if args.stage == "gap":
        return [PlannedRun("baseline", b, 0, tag=f"e{args.epochs}") for b in GAP_BATCHES]
    runs = [
        PlannedRun(arm, args.batch, seed, tag=f"e{args.epochs}")
        for seed in args.seeds
        for arm in PAIRED_ARMS
        if arm in args.arms
    ]
    if "conadv-shared+randaugment" in args.arms:
        runs.append(PlannedRun("conadv-shared+randaugment", args.batch, 0, tag=f"e{args.epochs}"))
    return runs


def train(args: argparse.Namespace, run: PlannedRun, gflops: float) -> dict[str, Any]:
    from adv_large_batch.commands import train_images
    from adv_large_batch.conadv import ConAdvConfig
    from adv_large_batch.optimizers import image_optimizer_config

    arm = ARMS[run.method]
    run_cfg = train_images.ImageTrainConfig(
        dataset="fashion_mnist",
        model=args.model,
        width=args.width,
        batch_size=run.batch_size,
        micro_batch_size=min(args.micro_batch_size, run.batch_size),
        epochs=args.epochs,
        train_limit=args.train_limit,
        augment=arm.get("augment", "flip_crop"),
        seed=run.seed,
        verbose=2,
    )
    adv = ConAdvConfig(**arm["adv"], eps=args.eps)
    opt = image_optimizer_config()
    result = train_images.run(run_cfg, adv, opt)
    history = result["history"]
    keep = (
        "loss",
        "accuracy",
        "adv_accuracy",
        "val_accuracy",
        "val_loss",
        "elapsed_s",
        "elapsed_cpu_s",
        "learning_rate",
        "examples_per_s",
        "step_time_s",
        "adv_time_s",
    )
    return {
        "metric": "top1",
        "score": result["top1"],
        "wall_time_s": result["wall_time_s"],
        "steps": result["steps"],
        "images_per_s": result["images_per_s"],
        "images_per_s_overall": result["images_per_s_overall"],
        "peak_lr": result["config"]["optimizer"]["lr"],
        "curves": {k: history[k] for k in keep if k in history},
        "commit": args.commit,
        "host_matmul_gflops": gflops,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=("gap", "methods"), required=True)
    p.add_argument("--log", default=LOG)
    p.add_argument("--batch", type=int, default=4096, help="the chosen large batch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default="cifar_resnet8")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--eps", type=float, default=3.0, help="pixels out of 255")
    p.add_argument("--micro-batch-size", type=int, default=512)
    p.add_argument("--train-limit", type=int, default=None, help="smoke runs only")
    p.add_argument(
        "--arms",
        nargs="+",
        choices=tuple(ARMS),
        default=tuple(ARMS),
        help="the methods stage's arms to run (default: all; the randaugment row is seed 0 only)",
    )
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    return run_study(args, plan, train)


if __name__ == "__main__":
    sys.exit(main())
