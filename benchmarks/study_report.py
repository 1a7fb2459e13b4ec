"""Tables and plots of the evidence studies, from their JSONL logs (nothing is re-run).

    .venv/bin/python benchmarks/study_report.py            # prints Markdown, writes docs/*.png

* ConAdv (``docs/data/study_conadv.jsonl``): the gap stage (baseline accuracy by batch), and the
  methods stage at the chosen batch: mean, std, the paired difference (same seed) to the
  baseline and to DisAdv with a 95% t-interval, images/s and wall time, and a
  time-to-accuracy plot (test accuracy after each epoch against seconds of ``fit``).
* ScaLA (``docs/data/study_scala.jsonl``): every run, by batch; the arms at the chosen batch
  and LAMB LR: mean, std and the paired difference to LAMB (95% t-interval) of the test
  accuracy of the validation-best epoch and of the last epoch, the regulariser, wall time and
  examples/s; and a time-to-accuracy plot (validation accuracy after each epoch against
  seconds of ``fit``) of the seed-0 runs at that batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import _pyplot  # noqa: E402
from repro_common import read_log  # noqa: E402

#: two-sided 95% quantiles of Student's t, by degrees of freedom
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired_interval(differences: list[float]) -> tuple[float, float]:
    """Mean of paired differences and the half-width of its 95% t-interval (nan for n < 2).

    >>> paired_interval([1.0, 2.0, 3.0])
    (2.0, 2.484...)
    """
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, float("nan")
    half = T_975[len(differences) - 1] * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, half


def by_seed(records: list[dict[str, Any]], method: str, batch: int) -> dict[int, float]:
    return {
        r["seed"]: 100.0 * float(r["score"])
        for r in records
        if r["method"] == method and r["batch_size"] == batch
    }


def gap_table(records: list[dict[str, Any]], method: str) -> str:
    lines = [
        "| batch | optimizer steps | peak LR | test top-1 % | train wall s | img/s (last epoch) |",
        "|---|---|---|---|---|---|",
    ]
    rows = sorted(
        (r for r in records if r["method"] == method and r["seed"] == 0),
        key=lambda r: r["batch_size"],
    )
    for r in rows:
        lines.append(
            f"| {r['batch_size']:,} | {r['steps']} | {r.get('peak_lr', float('nan')):.3g} "
            f"| {100 * r['score']:.2f} | {r['wall_time_s']:.0f} | "
            f"{r.get('images_per_s', r.get('examples_per_s', 0.0)):,.0f} |"
        )
    return "\n".join(lines)


def scala_table(records: list[dict[str, Any]]) -> str:
    """One row per ScaLA-study run: test accuracy of the last epoch and of the epoch with the
    best validation accuracy (the model selected on validation)."""
    lines = [
        "| method | batch | seed | LR at 32 (sqrt-scaled) | optimizer steps "
        "| best validation % (epoch) | its test % "
        "| last-epoch validation % | last-epoch test % | train wall s | ex/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["batch_size"], r["method"], r["seed"])):
        lr = f"{_lr(r):g}"
        val, test = r["curves"]["val_accuracy"], r["curves"]["test_accuracy"]
        best = max(range(len(val)), key=val.__getitem__)
        lines.append(
            f"| {r['method']} | {r['batch_size']:,} | {r['seed']} | {lr} | {r['steps']} "
            f"| {100 * val[best]:.2f} ({best + 1}) | {100 * test[best]:.2f} "
            f"| {100 * r['score']:.2f} | {100 * r['test']:.2f} | {r['wall_time_s']:.0f} "
            f"| {r['examples_per_s']:.1f} |"
        )
    return "\n".join(lines)


def _lr(record: dict[str, Any]) -> float:
    return float(record["flags"]["lr"])


def _best_epoch_test(record: dict[str, Any]) -> float:
    """Test accuracy (%) of the epoch with the best validation accuracy."""
    val, test = record["curves"]["val_accuracy"], record["curves"]["test_accuracy"]
    return 100.0 * test[max(range(len(val)), key=val.__getitem__)]


def scala_arms_table(
    records: list[dict[str, Any]], batch: int, lr: float, arms: list[str], reference: str = "lamb"
) -> str:
    """Arms at ``batch`` and LAMB LR ``lr``, seeds paired against ``reference``."""
    lines = [
        "| arm | seeds | test % of the val-best epoch: mean (std) "
        f"| minus {reference}, paired (95% CI) | last-epoch test %: mean (std) "
        f"| minus {reference}, paired (95% CI) | regulariser r, last epoch (mean) "
        "| train wall s (mean) | ex/s (mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def runs(arm: str) -> dict[int, dict[str, Any]]:
        return {
            r["seed"]: r
            for r in records
            if r["method"] == arm and r["batch_size"] == batch and _lr(r) == lr
        }

    ref = runs(reference)
    for arm in arms:
        rs = runs(arm)
        if not rs:
            continue
        cells = []
        for value in (_best_epoch_test, lambda r: 100.0 * float(r["test"])):
            scores = {s: value(r) for s, r in rs.items()}
            values = list(scores.values())
            std = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "-"
            cells.append(f"{statistics.fmean(values):.2f} ({std})")
            seeds = sorted(set(scores) & set(ref))
            if arm == reference or not seeds:
                cells.append("")
                continue
            mean, half = paired_interval([scores[s] - value(ref[s]) for s in seeds])
            interval = f" ± {half:.2f}" if len(seeds) > 1 else ""
            cells.append(f"{mean:+.2f}{interval} (n={len(seeds)})")
        reg = [r["curves"].get("regulariser", [0.0])[-1] for r in rs.values()]
        wall = statistics.fmean(float(r["wall_time_s"]) for r in rs.values())
        rate = statistics.fmean(float(r["examples_per_s"]) for r in rs.values())
        lines.append(
            f"| {arm} | {','.join(str(s) for s in sorted(rs))} | {' | '.join(cells)} "
            f"| {statistics.fmean(reg):.3g} | {wall:.0f} | {rate:.1f} |"
        )
    return "\n".join(lines)


def _finish(
    plt: Any,
    fig: Any,
    ax: Any,
    path: str,
    xlabel: str,
    ylabel: str,
    title: str,
    legend_size: int,
) -> None:
    """Label, grid and legend a time-to-accuracy axis, then write ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scala_time_to_accuracy(
    records: list[dict[str, Any]], batch: int, lr: float, small_batch: int, path: str
) -> None:
    """Validation accuracy after each epoch against seconds of fit: the seed-0 arms at
    ``batch`` / ``lr`` and the small-batch runs (another host: their seconds are scaled by
    the ratio of the hosts' matmul rates, said in the legend)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    here = [r for r in records if r["batch_size"] == batch and r["seed"] == 0 and _lr(r) == lr]
    rate = statistics.fmean(float(r["host_matmul_gflops"]) for r in here) if here else 0.0
    for r in here:
        curves = r["curves"]
        ax.plot(
            curves["elapsed_s"], [100 * a for a in curves["val_accuracy"]], "o-", label=r["method"]
        )
    for r in records:
        if r["batch_size"] != small_batch or r["seed"] != 0 or not rate:
            continue
        scale = float(r["host_matmul_gflops"]) / rate
        ax.plot(
            [t * scale for t in r["curves"]["elapsed_s"]],
            [100 * a for a in r["curves"]["val_accuracy"]],
            "s--",
            alpha=0.6,
            label=f"{r['method']} @ {small_batch} (seconds x {scale:.2f}: other host)",
        )
    ax.set_xscale("log")
    title = f"Rotten Tomatoes, MiniLM-L6, batch {batch:,}, LAMB LR {lr:g} at 32, seed 0"
    _finish(
        plt,
        fig,
        ax,
        path,
        "seconds of fit (2 CPU cores, log scale)",
        "validation accuracy % after each epoch",
        title,
        legend_size=7,
    )


def methods_table(records: list[dict[str, Any]], batch: int, arms: list[str]) -> str:
    lines = [
        "| arm | seeds | mean % | std | minus baseline, paired (95% CI) "
        "| minus DisAdv, paired (95% CI) | img/s (last epoch, mean) | train wall s (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base, disadv = by_seed(records, "baseline", batch), by_seed(records, "disadv", batch)
    for arm in arms:
        rs = [r for r in records if r["method"] == arm and r["batch_size"] == batch]
        if not rs:
            continue
        scores = by_seed(records, arm, batch)
        values = list(scores.values())
        std = statistics.stdev(values) if len(values) > 1 else float("nan")

        def versus(reference: dict[int, float]) -> str:
            seeds = sorted(set(scores) & set(reference))
            if arm == "baseline" and reference is base or not seeds:
                return ""
            mean, half = paired_interval([scores[s] - reference[s] for s in seeds])
            return f"{mean:+.2f} ± {half:.2f} (n={len(seeds)})"

        rate = statistics.fmean(float(r["images_per_s"]) for r in rs)
        wall = statistics.fmean(float(r["wall_time_s"]) for r in rs)
        lines.append(
            f"| {arm} | {','.join(str(s) for s in sorted(scores))} "
            f"| {statistics.fmean(values):.2f} "
            f"| {std:.2f} | {versus(base)} | {versus(disadv) if arm != 'disadv' else ''} "
            f"| {rate:,.0f} | {wall:.0f} |"
        )
    return "\n".join(lines)


def plot_time_to_accuracy(records: list[dict[str, Any]], batch: int, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in records:
        if r["batch_size"] != batch or r["seed"] != 0:
            continue
        curves = r["curves"]
        ax.plot(
            curves["elapsed_s"], [100 * a for a in curves["val_accuracy"]], "o-", label=r["method"]
        )
    _finish(
        plt,
        fig,
        ax,
        path,
        "seconds of fit (2 CPU cores)",
        "test top-1 % after each epoch",
        f"Fashion-MNIST, batch {batch:,}, seed 0",
        legend_size=8,
    )


def plot_gap(records: list[dict[str, Any]], method: str, path: str, title: str) -> None:
    plt = _pyplot()
    rows = sorted(
        (r for r in records if r["method"] == method and r["seed"] == 0),
        key=lambda r: r["batch_size"],
    )
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.semilogx([r["batch_size"] for r in rows], [100 * r["score"] for r in rows], "o-", base=2)
    ax.set_xlabel("global batch")
    ax.set_ylabel("test accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conadv-log", default="docs/data/study_conadv.jsonl")
    p.add_argument("--scala-log", default="docs/data/study_scala.jsonl")
    p.add_argument("--conadv-batch", type=int, default=4096)
    p.add_argument("--scala-batch", type=int, default=1024)
    p.add_argument("--scala-lr", type=float, default=1e-3, help="the arms' LAMB LR at 32")
    p.add_argument("--plots", default="docs")
    args = p.parse_args(argv)
    conadv = read_log(args.conadv_log)
    if conadv:
        gap = [r for r in conadv if r["key"].startswith("baseline|") and r["seed"] == 0]
        print("ConAdv gap (baseline, seed 0):\n" + gap_table(gap, "baseline") + "\n")
        arms = [
            "baseline",
            "disadv",
            "conadv-separate",
            "conadv-shared",
            "conadv-shared+randaugment",
        ]
        print(f"ConAdv methods at {args.conadv_batch:,}:")
        print(methods_table(conadv, args.conadv_batch, arms) + "\n")
        plot_gap(
            gap,
            "baseline",
            f"{args.plots}/study_conadv_gap.png",
            "Fashion-MNIST, baseline, 5 epochs",
        )
        plot_time_to_accuracy(
            conadv, args.conadv_batch, f"{args.plots}/study_conadv_time_to_accuracy.png"
        )
    scala = read_log(args.scala_log)
    if scala:
        print("ScaLA study, every run:\n" + scala_table(scala) + "\n")
        arms = ["lamb", "scala", "rdrop", "perturbation-only", "scala-relative", "lamb-bf16"]
        print(f"ScaLA arms at {args.scala_batch:,}, LAMB LR {args.scala_lr:g}:")
        print(scala_arms_table(scala, args.scala_batch, args.scala_lr, arms) + "\n")
        plot_scala_time_to_accuracy(
            scala,
            args.scala_batch,
            args.scala_lr,
            32,
            f"{args.plots}/study_scala_time_to_accuracy.png",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
