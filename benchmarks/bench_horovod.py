"""Horovod overhead: 2 processes vs 1 at the same global batch and the same cores.

The same training step (``ScaLA`` trainer, the bundled all-MiniLM-L6-v2 on real
Rotten Tomatoes batches, LAMB; ``--method baseline`` or ``scala``) runs

* as 1 process using all ``nproc`` cores (intra-op threads = nproc) on the global
  batch, and
* under ``horovodrun -np 2 --gloo``, each rank with nproc / 2 threads on half of
  the global batch, the weight gradients averaged by one grouped allreduce per
  step,

alternating 1-process and 2-process launches ``--rounds`` times.  Each launch
warms up (trace, optimizer state), then times ``--steps`` steps between two
barriers; the 2-process time is rank 0's.  Reported: seconds per step of each,
the overhead 2-proc / 1-proc - 1 (median and spread over rounds), and the share
of a 2-process step spent in the allreduce (timed separately on the same
gradients).

    .venv/bin/python benchmarks/bench_horovod.py --json-out runs/bench/bench_horovod.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_common import machine  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One process of a launch (1 process, or one horovodrun rank)."""
    import tensorflow as tf

    from adv_large_batch.data import text_pipeline, text_tasks
    from adv_large_batch.engine import distributed
    from adv_large_batch.models.text_classifiers import build_network, default_model_path
    from adv_large_batch.optimizers import LAMB
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    backend = distributed.get_backend("auto")
    threads = max(1, (os.cpu_count() or 1) // backend.size)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    network, tokenizer = build_network(default_model_path(), 2, 0)
    per_rank = args.global_batch // backend.size
    task = text_tasks.load_task("rotten_tomatoes")
    split = task.train.take(args.global_batch * args.batches)
    feats = text_pipeline.tokenize(split, tokenizer, args.max_length)
    ds = tf.data.Dataset.from_tensor_slices((feats, split.labels.astype(np.int32)))
    # Rank r takes rows r*per_rank .. of every global batch: same global batches as 1 process.
    ds = ds.batch(args.global_batch, drop_remainder=True).map(
        lambda x, y: tf.nest.map_structure(
            lambda t: t[backend.rank * per_rank : (backend.rank + 1) * per_rank], (x, y)
        )
    )
    iterator = iter(ds.cache().repeat().prefetch(2))
    model = ScaLA(
        network,
        ScaLAConfig(method=args.method, start_step=0),
        micro_batch_size=args.micro_batch_size,
        backend=backend,
    )
    model.compile(
        optimizer=LAMB(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.build_before_tracing(ds.element_spec)
    model.make_train_function()

    def steps(count: int) -> None:
        logs = None
        for _ in range(count):
            logs = model.train_function(iterator)
        np.asarray(logs["loss"])

    def barrier() -> None:
        np.asarray(backend.allreduce_mean(tf.constant(1.0)))

    steps(args.warmup)
    barrier()
    t0 = time.perf_counter()
    steps(args.steps)
    barrier()
    seconds = (time.perf_counter() - t0) / args.steps

    allreduce_s = 0.0
    if backend.size > 1:  # the allreduce alone, on tensors shaped like the gradients
        grads = [tf.zeros_like(v) for v in model.trainable_variables]
        fn = tf.function(backend.allreduce_gradients)
        np.asarray(fn(grads)[0])
        barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            np.asarray(fn(grads)[0])
        allreduce_s = (time.perf_counter() - t0) / args.steps
    if backend.is_chief:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "size": backend.size,
                    "threads": threads,
                    "seconds_per_step": seconds,
                    "allreduce_s": allreduce_s,
                    "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
                },
                f,
            )


def launch(args: argparse.Namespace, size: int, out: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--out", out]
    for flag in ("global_batch", "micro_batch_size", "max_length", "batches", "steps", "warmup"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    cmd += ["--method", args.method]
    if size > 1:
        horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
        cmd = [horovodrun, "-np", str(size), "-H", f"localhost:{size}", "--gloo", *cmd]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"launch with {size} process(es) failed: exit {proc.returncode}")
    with open(out) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--global-batch", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--method", default="baseline", choices=("baseline", "scala"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json-out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.global_batch % 2:
        p.error(f"--global-batch must be even (split over 2 processes), got {args.global_batch}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.worker:
        worker(args)
        return 0
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"[horovod] {started} machine {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            one = launch(args, 1, os.path.join(tmp, f"one{r}.json"))
            two = launch(args, 2, os.path.join(tmp, f"two{r}.json"))
            row = {
                "one_s": one["seconds_per_step"],
                "two_s": two["seconds_per_step"],
                "allreduce_s": two["allreduce_s"],
                "overhead": two["seconds_per_step"] / one["seconds_per_step"] - 1,
            }
            rows.append(row)
            print(
                f"[horovod] round {r}: 1 process {row['one_s']:.3f} s/step, 2 processes "
                f"{row['two_s']:.3f} s/step (allreduce {row['allreduce_s']:.3f} s), "
                f"overhead {row['overhead']:+.1%}"
            )
    over = [r["overhead"] for r in rows]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(
        "\n| method | global batch | 1 process s/step | 2 processes s/step | overhead median "
        "[min, max] | allreduce s (share of the 2-process step) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.method} | {args.global_batch} | {med['one_s']:.3f} | {med['two_s']:.3f} | "
        f"{statistics.median(over):+.1%} [{min(over):+.1%}, {max(over):+.1%}] | "
        f"{med['allreduce_s']:.3f} ({med['allreduce_s'] / med['two_s']:.0%}) |"
    )
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(
                {"date": started, "machine": machine(), "args": vars(args), "rounds": rows}, f
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
