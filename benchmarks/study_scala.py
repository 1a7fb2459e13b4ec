"""Evidence study: does ScaLA keep small-batch accuracy at a large batch, and what in it helps?

MiniLM-L6 (the bundled all-MiniLM-L6-v2) on the whole Rotten Tomatoes split of this
project (10,201 train / 1,275 validation / 1,276 test snippets), 64 tokens, micro-batches
of 32, the paper's protocol: the same number of epochs (6) at every batch, LAMB with
sqrt-scaled LR, warm-up 10% + linear decay.  Stages, each a list of runs in one resumable
JSONL log (``--log``; a run already logged is skipped, so the study can be stopped and
started again, one run at a time):

* ``gap``: LAMB at batch 32, 256, 1K, 2K and 4K and AdamW at 32, seed 0: where does the
  large-batch gap open?
* ``lr``: a 3-value LR grid for LAMB at the chosen batch ``--batch`` (validation picks).
* ``arms``: at ``--batch`` / ``--lamb-lr``, ``--seeds`` paired (same data order and head
  init per seed): LAMB; ScaLA as in the paper (PGA-1, eps 1e-5, t_s half-way); R-Drop only
  (the same symmetric KL between two dropout passes, no perturbation); perturbation only
  (ScaLA with one dropout mask shared by all passes); ScaLA with eps relative to the
  per-example embedding RMS.
* ``bf16``: LAMB and ScaLA (those of them in ``--arms``) under ``mixed_bfloat16`` at
  ``--batch``, seed 0.

Every record holds per-epoch validation and test accuracy, wall and CPU seconds since the
start of training, the host's measured matmul GFLOP/s and the git commit it ran on.
``benchmarks/study_report.py`` turns the log into the tables and plots of docs/results.md.

    .venv/bin/python benchmarks/study_scala.py --stage gap
    .venv/bin/python benchmarks/study_scala.py --stage arms --batch 1024 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from repro_common import PlannedRun, execute, markdown_table, read_log, summarise  # noqa: E402

LOG = "docs/data/study_scala.jsonl"
SMALL_BATCH = 32
GAP_BATCHES = (32, 256, 1024, 2048, 4096)

# label -> optimizer and ScaLAConfig fields ("delay": t_s half-way through the run).
ARMS: dict[str, dict[str, Any]] = {
    "adamw": {"optimizer": "adamw", "adv": {"method": "baseline"}},
    "lamb": {"optimizer": "lamb", "adv": {"method": "baseline"}},
    "scala": {"optimizer": "lamb", "adv": {"method": "scala"}, "delay": True},
    "rdrop": {"optimizer": "lamb", "adv": {"method": "rdrop"}, "delay": True},
    "perturbation-only": {
        "optimizer": "lamb",
        "adv": {"method": "scala", "dropout": "shared"},
        "delay": True,
    },
    "scala-relative": {
        "optimizer": "lamb",
        "adv": {"method": "scala", "radius": "relative", "eps": 0.1, "step_size": 1.0},
        "delay": True,
    },
}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """float32 GFLOP/s of an n x n matmul on this host (median of ``repeats``)."""
    import statistics

    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    (a @ b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def run_study(
    args: argparse.Namespace,
    plan: Callable[[argparse.Namespace], list[PlannedRun]],
    train: Callable[[argparse.Namespace, PlannedRun, float], dict[str, Any]],
) -> int:
    """Both studies' main loop: print the table (``--summary-only``), or run what the log lacks."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.summary_only:
        print(markdown_table(summarise(read_log(args.log))))
        return 0
    args.commit = git_commit()
    gflops = matmul_gflops()
    print(f"[study] host float32 matmul {gflops:.1f} GFLOP/s; commit {args.commit}", flush=True)
    records = execute(plan(args), args.log, lambda run: train(args, run, gflops))
    print(markdown_table(summarise(records)))
    return 0


def _run(arm: str, batch: int, seed: int, lr: float, precision: str = "float32") -> PlannedRun:
    flags = (("lr", lr), ("precision", precision))
    return PlannedRun(arm, batch, seed, flags, tag=f"lr={lr:g}")


def plan(args: argparse.Namespace) -> list[PlannedRun]:
    runs: list[PlannedRun] = []
    if args.stage == "gap":
        runs.append(_run("adamw", SMALL_BATCH, 0, args.adamw_lr))
        for batch in args.gap_batches:
            runs.append(_run("lamb", batch, 0, args.lamb_lr))
    elif args.stage == "lr":
        for lr in args.lr_grid:
            runs.append(_run("lamb", args.batch, 0, lr))
    elif args.stage == "arms":
        for seed in args.seeds:
            for arm in args.arms:
                runs.append(_run(arm, args.batch, seed, args.lamb_lr))
    elif args.stage == "bf16":
        for arm in [a for a in ("lamb", "scala") if a in args.arms]:
            runs.append(_run(f"{arm}-bf16", args.batch, 0, args.lamb_lr, "mixed_bfloat16"))
    return runs


def checkpoint_dir(args: argparse.Namespace, run: PlannedRun) -> str | None:
    """Final weights of every seed-0 run (the sharpness analysis reads some of them)."""
    if run.seed != 0 or not args.checkpoints:
        return None
    return os.path.join(args.checkpoints, f"{run.method}-{run.batch_size}-{run.tag}")


def train(args: argparse.Namespace, run: PlannedRun, gflops: float) -> dict[str, Any]:
    from adv_large_batch.commands import finetune
    from adv_large_batch.optimizers import OptimizerConfig
    from adv_large_batch.scala import ScaLAConfig

    arm = ARMS[run.method.removesuffix("-bf16")]
    flags = run.flag_dict()
    steps = ((args.train_limit or args.train_size) // run.batch_size) * args.epochs
    run_cfg = finetune.FinetuneConfig(
        task="rotten_tomatoes",
        batch_size=run.batch_size,
        micro_batch_size=min(args.micro_batch_size, run.batch_size),
        epochs=args.epochs,
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        max_seq_length=args.max_seq_length,
        seed=run.seed,
        precision=flags["precision"],
        checkpoint_dir=checkpoint_dir(args, run),
        test_each_epoch=True,
        verbose=2,
    )
    adv = ScaLAConfig(**arm["adv"], start_step=steps // 2 if arm.get("delay") else 0)
    opt = OptimizerConfig(
        optimizer=arm["optimizer"],
        lr=flags["lr"],
        lr_scaling="none" if arm["optimizer"] == "adamw" else "sqrt",
        base_batch_size=SMALL_BATCH,
    )
    result = finetune.run(run_cfg, adv, opt)
    history = result["history"]
    keep = (
        "loss",
        "task_loss",
        "regulariser",
        "regulariser_y0",
        "perturbation_linf",
        "val_accuracy",
        "val_loss",
        "test_accuracy",
        "elapsed_s",
        "elapsed_cpu_s",
        "learning_rate",
        "examples_per_s",
        "step_time_s",
        "adv_time_s",
    )
    return {
        "metric": "accuracy",
        "score": result["validation"]["accuracy"],
        "test": result["test"]["accuracy"],
        "untrained": result["validation_untrained_head"]["accuracy"],
        "majority": result["majority_class_accuracy"],
        "wall_time_s": result["wall_time_s"],
        "steps": result["steps"],
        "examples_per_s": result["examples_per_s"],
        "adv_start_step": adv.start_step if adv.perturbs else None,
        "curves": {k: history[k] for k in keep if k in history},
        "commit": args.commit,
        "host_matmul_gflops": gflops,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=("gap", "lr", "arms", "bf16"), required=True)
    p.add_argument("--log", default=LOG)
    p.add_argument("--batch", type=int, default=1024, help="the chosen large batch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--arms",
        nargs="+",
        choices=[a for a in ARMS if a != "adamw"],
        default=["lamb", "scala", "rdrop", "perturbation-only", "scala-relative"],
    )
    p.add_argument(
        "--gap-batches",
        type=int,
        nargs="+",
        default=list(GAP_BATCHES),
        help="the LAMB batches of the gap stage, in the order to run them",
    )
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max-seq-length", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--lamb-lr", type=float, default=2e-3, help="LAMB LR at batch 32 (sqrt-scaled)")
    p.add_argument("--adamw-lr", type=float, default=5e-5, help="AdamW LR at batch 32")
    p.add_argument("--lr-grid", type=float, nargs="+", default=[2e-3, 4e-3, 8e-3])
    p.add_argument("--train-size", type=int, default=10201, help="training examples (for t_s)")
    p.add_argument("--train-limit", type=int, default=None, help="smoke runs only")
    p.add_argument("--eval-limit", type=int, default=None, help="smoke runs only")
    p.add_argument("--checkpoints", default="runs/study_scala/checkpoints")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    bad = [
        b
        for b in (args.batch, *args.gap_batches)
        if b % args.micro_batch_size and b > args.micro_batch_size
    ]
    if bad:
        p.error(f"batches {bad} are not multiples of --micro-batch-size {args.micro_batch_size}")
    return run_study(args, plan, train)


if __name__ == "__main__":
    sys.exit(main())
