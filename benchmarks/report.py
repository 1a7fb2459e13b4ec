"""Tables and plots of the evaluation suite, from the logs the sweeps and benchmarks wrote.

Reads (whatever exists of) ``runs/repro/scala.jsonl``, ``runs/repro/conadv.jsonl``,
``runs/bench/time_breakdown.json`` and ``runs/sharpness/*.json``; writes matplotlib
PNGs to ``docs/`` and prints the Markdown tables that ``docs/results.md`` quotes.

    .venv/bin/python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repro_common import markdown_table, read_log, summarise  # noqa: E402

SCALA_SWEEP = ("adam", "lamb", "scala")
CONADV_METHODS = ("baseline", "disadv", "conadv", "conadv+aug")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_batch(
    rows: list[dict[str, Any]],
    methods: tuple[str, ...],
    path: str,
    title: str,
    reference: dict[str, Any] | None = None,
) -> None:
    """Mean accuracy (error bars: min..max over seeds) vs global batch, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        skip = None if reference is None else reference["batch_size"]  # drawn as a line
        pts = sorted(
            (r for r in rows if r["method"] == method and r["batch_size"] != skip),
            key=lambda r: r["batch_size"],
        )
        if not pts:
            continue
        xs = [r["batch_size"] for r in pts]
        ys = [100 * r["mean"] for r in pts]
        err = [
            [100 * (r["mean"] - r["min"]) for r in pts],
            [100 * (r["max"] - r["mean"]) for r in pts],
        ]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
    if reference is not None:
        ax.axhline(
            100 * reference["mean"],
            color="grey",
            linestyle="--",
            label=f"{reference['method']} @ {reference['batch_size']}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size")
    ax.set_ylabel("accuracy % (mean, min..max over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(records: list[dict[str, Any]], batch: int, path: str, title: str) -> None:
    """Validation accuracy per epoch (mean over seeds) of every method at ``batch``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    methods: dict[str, list[list[float]]] = {}
    for r in records:
        if r["batch_size"] == batch and "val_accuracy" in r.get("curves", {}):
            methods.setdefault(r["method"], []).append(r["curves"]["val_accuracy"])
    for method, curves in methods.items():
        n = min(len(c) for c in curves)
        mean = [100 * statistics.fmean(c[i] for c in curves) for i in range(n)]
        ax.plot(range(1, n + 1), mean, marker="o", label=f"{method} ({len(curves)} seeds)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_breakdown(data: dict[str, Any], path: str) -> None:
    """Stacked bars: forward, backward, optimizer, ascent, adversarial pass per step type."""
    plt = _pyplot()
    parts = ("forward", "backward", "optimizer", "ascent", "adversarial_pass")
    labels = list(data["breakdown_s"])
    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = [0.0] * len(labels)
    for part in parts:
        values = [max(data["breakdown_s"][label].get(part, 0.0), 0.0) for label in labels]
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds per step (medians)")
    args = data["args"]
    ax.set_title(f"MiniLM-L6 step, batch {args['batch_size']}, max length {args['max_length']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sharpness(results: list[dict[str, Any]], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [r["label"] for r in results]
    ax.bar(labels, [r["eigenvalue"] for r in results])
    ax.set_ylabel("top Hessian eigenvalue of the training loss")
    ax.set_title("Sharpness of the final weights (power iteration)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def subtract_pauses(records: list[dict[str, Any]], pauses: dict[str, float]) -> list[str]:
    """Take out of ``wall_time_s`` the seconds a run spent stopped (``kill -STOP``) while
    the speed benchmarks had the machine; returns the keys corrected."""
    fixed = []
    for r in records:
        if r["key"] in pauses:
            r["wall_time_s"] -= pauses[r["key"]]
            fixed.append(f"{r['key']} (-{pauses[r['key']]:.0f} s)")
    return fixed


def report_sweep(
    args: argparse.Namespace,
    pauses: dict[str, dict[str, float]],
    name: str,
    heading: str,
    methods: tuple[str, ...],
    title: str,
    curves_title: str,
    with_reference: bool = False,
) -> list[dict[str, Any]]:
    """Table, accuracy-vs-batch plot and largest-batch curves of ``runs/repro/<name>.jsonl``."""
    records = read_log(os.path.join(args.runs, f"repro/{name}.jsonl"))
    if not records:
        return records
    fixed = subtract_pauses(records, pauses.get(f"{name}.jsonl", {}))
    rows = summarise(records)
    print(f"\n## {heading}\n")
    print(markdown_table(rows))
    if fixed:
        print("\nWall times corrected for a pause: " + ", ".join(fixed))
    reference = None
    if with_reference:  # the small-batch row, drawn as a line
        reference = min(rows, key=lambda r: r["batch_size"])
    plot_accuracy_vs_batch(
        rows, methods, os.path.join(args.docs, f"{name}_accuracy_vs_batch.png"), title, reference
    )
    largest = max(r["batch_size"] for r in rows)
    plot_curves(
        records,
        largest,
        os.path.join(args.docs, f"{name}_curves.png"),
        f"{curves_title}, batch {largest}",
    )
    return records


def whole_fit_ratios(records: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(batch, seed, ScaLA fit wall / LAMB fit wall) for every pair the log holds."""
    pairs: dict[tuple[int, int], dict[str, float]] = {}
    for r in records:
        pairs.setdefault((r["batch_size"], r["seed"]), {})[r["method"]] = r["wall_time_s"]
    return [
        (b, s, v["scala"] / v["lamb"])
        for (b, s), v in sorted(pairs.items())
        if "scala" in v and "lamb" in v
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--docs", default="docs")
    args = p.parse_args(argv)
    os.makedirs(args.docs, exist_ok=True)

    pauses_path = os.path.join(args.runs, "repro/pauses.json")
    pauses = {}
    if os.path.exists(pauses_path):
        with open(pauses_path) as f:
            pauses = json.load(f)
    scala = report_sweep(
        args,
        pauses,
        "scala",
        "ScaLA reproduction (Rotten Tomatoes, validation accuracy)",
        SCALA_SWEEP,
        "MiniLM-L6 on Rotten Tomatoes",
        "validation accuracy per epoch",
        with_reference=True,
    )
    ratios = whole_fit_ratios(scala)
    if ratios:
        print("\nWhole fit (PGA-1 from half-way) / LAMB fit, wall time, per (batch, seed):")
        print(", ".join(f"{b}/s{s}: {x:.2f}" for b, s, x in ratios))
    report_sweep(
        args,
        pauses,
        "conadv",
        "ConAdv reproduction (Fashion-MNIST, test top-1)",
        CONADV_METHODS,
        "small ResNet on Fashion-MNIST, LARS",
        "test accuracy per epoch",
    )
    breakdown = os.path.join(args.runs, "bench/time_breakdown.json")
    if os.path.exists(breakdown):
        with open(breakdown) as f:
            plot_breakdown(json.load(f), os.path.join(args.docs, "time_breakdown.png"))
    sharp = []
    for path in sorted(glob.glob(os.path.join(args.runs, "sharpness/*.json"))):
        with open(path) as f:
            result = json.load(f)
        result["label"] = os.path.splitext(os.path.basename(path))[0]
        sharp.append(result)
    if sharp:
        plot_sharpness(sharp, os.path.join(args.docs, "sharpness.png"))
        print("\n| checkpoint | top Hessian eigenvalue | iterations |")
        print("|---|---|---|")
        for r in sharp:
            print(f"| {r['label']} | {r['eigenvalue']:.3f} | {r['iterations']} |")
    print(f"\nplots in {args.docs}/: " + ", ".join(sorted(glob.glob1(args.docs, "*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
