"""Shared plumbing of the reproduction sweeps: a plan of runs, a JSONL log, resumption.

Every run of a sweep is one record (a JSON line) in the sweep's log; a sweep that is
stopped and started again skips the runs already logged, so a long sweep can be
run in pieces.  ``summarise`` turns the log into mean / spread per (method, batch).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import time
from typing import Any, Callable, Iterable


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One training run of a sweep: a method label, a global batch, a seed, its flags."""

    method: str
    batch_size: int
    seed: int
    flags: tuple[tuple[str, Any], ...] = ()
    tag: str = ""  # tells apart runs of one (method, batch, seed), e.g. an LR grid

    @property
    def key(self) -> str:
        key = f"{self.method}|{self.batch_size}|{self.seed}"
        return f"{key}|{self.tag}" if self.tag else key

    def flag_dict(self) -> dict[str, Any]:
        return dict(self.flags)


def read_log(path: str) -> list[dict[str, Any]]:
    """The records of a sweep log (missing file: none)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def execute(
    plan: Iterable[PlannedRun],
    log_path: str,
    train: Callable[[PlannedRun], dict[str, Any]],
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every planned run not yet in ``log_path``; append one record per run."""
    import keras

    done = {r["key"] for r in read_log(log_path)}
    plan = list(plan)
    todo = [r for r in plan if r.key not in done]
    say(f"[sweep] {len(plan)} runs planned, {len(plan) - len(todo)} already in {log_path}")
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    for i, run in enumerate(todo):
        say(f"[sweep] ({i + 1}/{len(todo)}) {run.method} batch {run.batch_size} seed {run.seed}")
        start = time.time()
        record = {
            "key": run.key,
            "method": run.method,
            "batch_size": run.batch_size,
            "seed": run.seed,
            "flags": run.flag_dict(),
            **train(run),
            "command_wall_s": None,
        }
        record["command_wall_s"] = time.time() - start
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        say(
            f"[sweep] -> {record['metric']} {record['score']:.4f} "
            f"({record['command_wall_s']:.0f} s with set-up)"
        )
        keras.backend.clear_session()
        gc.collect()
    return read_log(log_path)


def add_sweep_arguments(parser: Any, log: str) -> None:
    """The flags every sweep shares: its log, its seeds, summary only."""
    parser.add_argument("--log", default=log)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--summary-only", action="store_true")


def run_sweep(
    parser: Any,
    args: Any,
    batches: list[int],
    plan: Callable[[], list[PlannedRun]],
    train: Callable[[PlannedRun], dict[str, Any]],
) -> int:
    """Refuse batches without one full step, run what the log lacks, print the table."""
    bad = [b for b in batches if args.train_limit // b < 1]
    if bad:
        parser.error(f"--batches {bad} exceed --train-limit {args.train_limit}: no full step")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    records = read_log(args.log) if args.summary_only else execute(plan(), args.log, train)
    print(markdown_table(summarise(records)))
    return 0


def summarise(records: list[dict[str, Any]], field: str = "score") -> list[dict[str, Any]]:
    """Mean, sample std, min and max of ``field`` per (method, batch); by batch, then the
    order methods first appear in."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["batch_size"]), []).append(r)
    rows = []
    for (method, batch), rs in groups.items():
        values = [float(r[field]) for r in rs]
        walls = [float(r["wall_time_s"]) for r in rs]
        rows.append(
            {
                "method": method,
                "batch_size": batch,
                "n": len(values),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
                "wall_mean_s": statistics.fmean(walls),
                "seeds": sorted(r["seed"] for r in rs),
            }
        )
    rows.sort(key=lambda r: r["batch_size"])  # stable: methods keep their order
    return rows


def markdown_table(rows: list[dict[str, Any]], scale: float = 100.0, unit: str = "%") -> str:
    """The ``summarise`` rows as a Markdown table (scores x ``scale``)."""
    lines = [
        f"| method | batch | mean {unit} | std | [min, max] | seeds | train wall s (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['batch_size']} | {r['mean'] * scale:.2f} | "
            f"{r['std'] * scale:.2f} | [{r['min'] * scale:.2f}, {r['max'] * scale:.2f}] | "
            f"{len(r['seeds'])} | {r['wall_mean_s']:.0f} |"
        )
    return "\n".join(lines)
