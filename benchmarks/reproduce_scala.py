"""ScaLA's tables 2, 3, 5 and figure 7 at small scale: MiniLM-L6 on Rotten Tomatoes.

Two parts, every run repeated over ``--seeds``:

* **batch sweep**: Adam at the small batch (32), then Adam, LAMB and ScaLA (LAMB +
  PGA-1 on the embeddings, injected from half-way) at each ``--batches``: where
  does the large-batch gap open, and does ScaLA close it?
* **ablations at the largest batch** (table 5): ScaLA with ground-truth labels as
  the target (GT), Gaussian noise instead of the ascent, ScaLA without delayed
  injection.

Each run is ``adv_large_batch.commands.finetune.run`` (what ``adv-large-batch finetune`` runs),
in this one process; results go to a JSONL log, and a stopped sweep resumes
where it stopped.  ``benchmarks/report.py`` turns the log into tables and plots.

    .venv/bin/python benchmarks/reproduce_scala.py --log runs/repro/scala.jsonl

The defaults are a small scale that fits 2 CPU cores: 2,048 training snippets,
3 epochs, 32 tokens, micro-batches of 32, the whole validation split (1,275);
batches 32 (192 steps), 256 (24 steps) and 512 (12 steps).  ``--probe-batches``
(default 1,024: 6 steps) are swept with Adam, LAMB and ScaLA after everything else,
to show where the runs stop learning at all: there every method is near the
majority class, so the largest batch of the comparison (and its ablations) is 512.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from repro_common import PlannedRun, add_sweep_arguments, run_sweep  # noqa: E402

# Method label -> (optimizer, ScaLA method, adv target, injected from half-way).
METHODS: dict[str, dict[str, Any]] = {
    "adam": {"optimizer": "adamw", "method": "baseline"},
    "lamb": {"optimizer": "lamb", "method": "baseline"},
    "scala": {"optimizer": "lamb", "method": "scala", "delay": True},
    "scala-gt": {"optimizer": "lamb", "method": "scala", "adv_target": "labels", "delay": True},
    "gaussian": {"optimizer": "lamb", "method": "gaussian", "delay": True},
    "scala-no-delay": {"optimizer": "lamb", "method": "scala", "delay": False},
}
SWEEP_METHODS = ("adam", "lamb", "scala")
ABLATIONS = ("scala-gt", "gaussian", "scala-no-delay")


def plan_runs(args: argparse.Namespace) -> list[PlannedRun]:
    """Seed-major; within a seed the runs the targets compare come first (the small batch,
    the methods at the largest batch, the ablations there), then the smaller batches;
    the probe batches of every seed come last.  ``--methods`` keeps only the methods it names."""
    largest = max(args.batches)
    plan: list[PlannedRun] = []
    for seed in args.seeds:
        plan.append(PlannedRun("adam", args.small_batch, seed))
        for method in SWEEP_METHODS:
            plan.append(PlannedRun(method, largest, seed))
        for method in ABLATIONS:
            plan.append(PlannedRun(method, largest, seed))
        for batch in sorted(args.batches, reverse=True)[1:]:
            for method in SWEEP_METHODS:
                plan.append(PlannedRun(method, batch, seed))
    for seed in args.seeds:
        for batch in args.probe_batches:
            for method in SWEEP_METHODS:
                plan.append(PlannedRun(method, batch, seed))
    return [run for run in plan if run.method in args.methods]


def checkpoint_dir(args: argparse.Namespace, run: PlannedRun) -> str | None:
    """Keep the final weights of seed 0 for the sharpness analysis (small, LAMB, ScaLA)."""
    if run.seed != args.seeds[0] or not args.checkpoints:
        return None
    wanted = {("adam", args.small_batch), ("lamb", max(args.batches)), ("scala", max(args.batches))}
    if (run.method, run.batch_size) not in wanted:
        return None
    return os.path.join(args.checkpoints, f"{run.method}-{run.batch_size}")


def train(args: argparse.Namespace, run: PlannedRun) -> dict[str, Any]:
    from adv_large_batch.commands import finetune
    from adv_large_batch.optimizers import OptimizerConfig
    from adv_large_batch.scala import ScaLAConfig

    spec = METHODS[run.method]
    steps = (args.train_limit // run.batch_size) * args.epochs
    run_cfg = finetune.FinetuneConfig(
        task="rotten_tomatoes",
        batch_size=run.batch_size,
        micro_batch_size=min(args.micro_batch_size, run.batch_size),
        epochs=args.epochs,
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        max_seq_length=args.max_seq_length,
        seed=run.seed,
        checkpoint_dir=checkpoint_dir(args, run),
        verbose=0,
    )
    adv = ScaLAConfig(
        method=spec["method"],
        adv_target=spec.get("adv_target", "probs"),
        start_step=steps // 2 if spec.get("delay") else 0,
    )
    lr = args.adam_lr if spec["optimizer"] == "adamw" else args.lamb_lr
    opt = OptimizerConfig(
        optimizer=spec["optimizer"], lr=lr, lr_scaling="sqrt", base_batch_size=args.small_batch
    )
    result = finetune.run(run_cfg, adv, opt)
    history = result["history"]
    return {
        "metric": "accuracy",
        "score": result["validation"]["accuracy"],
        "untrained": result["validation_untrained_head"]["accuracy"],
        "majority": result["majority_class_accuracy"],
        "wall_time_s": result["wall_time_s"],
        "steps": result["steps"],
        "examples_per_s": result["examples_per_s"],
        "peak_lr": lr * (run.batch_size / args.small_batch) ** 0.5,
        "adv_start_step": adv.start_step if adv.perturbs else None,
        "curves": {k: history[k] for k in ("loss", "val_accuracy", "val_loss") if k in history},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sweep_arguments(p, "runs/repro/scala.jsonl")
    p.add_argument("--small-batch", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 512])
    p.add_argument(
        "--probe-batches",
        type=int,
        nargs="*",
        default=[1024],
        help="batches beyond the comparison, swept last (Adam, LAMB, ScaLA only)",
    )
    p.add_argument("--train-limit", type=int, default=2048)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-seq-length", type=int, default=32)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--adam-lr", type=float, default=1e-4, help="AdamW LR at the small batch")
    p.add_argument("--lamb-lr", type=float, default=2e-3, help="LAMB LR at the small batch")
    p.add_argument("--checkpoints", default="runs/repro/scala_checkpoints")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="run only these methods (default: all)",
    )
    args = p.parse_args(argv)
    return run_sweep(
        p,
        args,
        [args.small_batch, *args.batches, *args.probe_batches],
        lambda: plan_runs(args),
        lambda r: train(args, r),
    )


if __name__ == "__main__":
    sys.exit(main())
