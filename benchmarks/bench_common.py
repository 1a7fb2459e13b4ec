"""Timing helpers shared by the benchmarks: machine load, machine facts, rounds of ratios,
and the persistent worker processes of the two-backend benchmarks.

The machine is shared, so every benchmark alternates its variants in rounds and
measures, per round, how much of the cores *other* processes used
(``/proc/stat`` minus this process and, for a worker process, minus the worker's own
CPU time); rounds above a threshold are repeated and left out of the medians.

``PipeWorker`` / ``alternated`` are the side-by-side machinery of ``bench_backends.py``
(ScaLA) and ``bench_image_backends.py`` (ConAdv): one worker process per Keras backend
(a process holds one backend), each answering ``{"op": "run", ...}`` JSON lines with
``{"seconds": ..., "cpu_s": ...}``, and the backends taking turns, one at a time, while
the other waits on its pipe.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np


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


def numpy_matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float32 GFLOP/s of NumPy's n x n matmul on this host (one warm-up, then ``repeats``)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


class PipeWorker:
    """A persistent benchmark worker (``cmd``) under ``KERAS_BACKEND=backend``, one JSON line
    at a time; ``info`` is its first JSON line (sent when it is ready: built and warm).
    ``wait=False`` returns at once (start several workers side by side, then ``ready()``)."""

    def __init__(self, backend: str, cmd: list[str], wait: bool = True) -> None:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        self.backend = backend
        self.info: dict[str, Any] = {}
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        if wait:
            self.ready()

    def ready(self) -> dict[str, Any]:
        """The worker's first JSON line (read once: blocks until it is built and warm)."""
        if not self.info:
            self.info = self._read()
        return self.info

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.backend} worker exited with {self.proc.wait()}")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, variant: str, count: int) -> tuple[float, float]:
        """``count`` steps of ``variant``: (seconds, share of the cores other processes used
        meanwhile: the machine's busy time minus the worker's and this process's CPU time)."""
        cores = os.cpu_count() or 1
        b0, c0 = busy_cpu_s(), time.process_time()
        self.proc.stdin.write(json.dumps({"op": "run", "variant": variant, "count": count}) + "\n")
        self.proc.stdin.flush()
        got = self._read()
        others = busy_cpu_s() - b0 - got["cpu_s"] - (time.process_time() - c0)
        return got["seconds"], max(others, 0.0) / (got["seconds"] * cores)

    def close(self) -> None:
        self.proc.stdin.write('{"op": "quit"}\n')
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def alternated(
    workers: dict[str, PipeWorker], variant: str, count: int, turn: int
) -> dict[str, tuple[float, float]]:
    """``count`` steps of ``variant`` on every worker, one after the other, the first one
    rotating with ``turn`` (TF first in even turns, JAX first in odd ones, for two):
    ``{backend: (seconds, others)}``."""
    names = list(workers)
    order = names[turn % len(names) :] + names[: turn % len(names)]
    return {name: workers[name].run(variant, count) for name in order}


def serve_steps(models: dict[str, Any], data: dict[str, list], cursor: dict[str, int]) -> None:
    """The worker side of ``PipeWorker``: answer ``{"op": "run", "variant", "count"}`` JSON
    lines on stdin until ``{"op": "quit"}`` (or end of input).  A run takes ``count``
    ``train_on_batch`` steps of ``models[variant]`` over its batches ``data[variant]``,
    round-robin from ``cursor[variant]`` (advanced), ends with the loss on the host (the
    steps are finished) and answers ``{"seconds": wall, "cpu_s": this process's CPU time}``."""
    for line in sys.stdin:
        ask = json.loads(line)
        if ask["op"] == "quit":
            break
        variant, count = ask["variant"], ask["count"]
        model, batches = models[variant], data[variant]
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(count):
            x, y = batches[cursor[variant] % len(batches)]
            logs = model.train_on_batch(x, y, return_dict=True)
            cursor[variant] += 1
        float(logs["loss"])  # results are on the host: the steps are done
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "cpu_s": time.process_time() - c0}), flush=True)
