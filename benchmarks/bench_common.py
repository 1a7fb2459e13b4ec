"""Timing helpers shared by the benchmarks: machine load, machine facts, rounds of ratios.

The machine is shared, so every benchmark alternates its variants in rounds and
measures, per round, how much of the cores *other* processes used
(``/proc/stat`` minus this process); rounds above a threshold are repeated and
left out of the medians.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable


def proc_status_mb(key: str, pid: str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have been busy (``/proc/stat``)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(threshold: float, max_wait: float, window: float = 0.5) -> float:
    """Wait until the rest of the machine uses < ``threshold`` of the cores; returns seconds waited.

    This process is idle while it samples and the peer is blocked on its pipe, so
    what ``/proc/stat`` counts is other people's work.
    """
    cores = os.cpu_count() or 1
    waited = 0.0
    while waited < max_wait:
        b0, c0, t0 = busy_cpu_s(), time.process_time(), time.perf_counter()
        time.sleep(window)
        dt = time.perf_counter() - t0
        others = busy_cpu_s() - b0 - (time.process_time() - c0)
        if others / (dt * cores) < threshold:
            break
        waited += dt
    return waited


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()}


def timed_call(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, share of the cores other processes used meanwhile) of one call of ``fn``."""
    cores = os.cpu_count() or 1
    b0, c0, t0 = busy_cpu_s(), time.process_time(), time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    others = busy_cpu_s() - b0 - (time.process_time() - c0)
    return seconds, max(others, 0.0) / (seconds * cores)


class Rounds:
    """Timed rounds; a round during which other processes used more than ``threshold`` of
    the cores is kept in the log but repeated (at most max(2, planned / 2) extra rounds)."""

    def __init__(self, planned: int, threshold: float) -> None:
        self.planned, self.threshold = planned, threshold
        self.rows: list[dict[str, float]] = []

    def more(self) -> bool:
        limit = self.planned + max(2, self.planned // 2)
        return len(self.clean()) < self.planned and len(self.rows) < limit

    def add(self, **row: float) -> dict[str, float]:
        self.rows.append(row)
        return row

    def clean(self) -> list[dict[str, float]]:
        return [r for r in self.rows if r["others"] <= self.threshold]

    def used(self) -> list[dict[str, float]]:
        return self.clean() or self.rows

    def count(self) -> str:
        """``clean/run``, the rounds the medians use out of those run."""
        return f"{len(self.clean())}/{len(self.rows)} clean"

    def stat(self, key: str) -> dict[str, float]:
        values = [r[key] for r in self.used()]
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
