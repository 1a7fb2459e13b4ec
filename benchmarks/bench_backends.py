"""Side by side: the library's ScaLA fine-tuning step on the TensorFlow and the JAX backend.

Two persistent worker processes (``backend_worker.py``, one per backend: a process holds
one Keras backend), the same bundled all-MiniLM-L6-v2 classifier, the same real Rotten
Tomatoes batches, LAMB, micro-batches of 32.  Rounds alternate the backends (TF first in
even rounds, JAX first in odd ones) while the other worker waits on its pipe, so each
has both cores in turn and slow drifts of a shared machine hit both; a round during
which other processes used more than ``--quiet-threshold`` of the cores is repeated.
Per variant (baseline / ScaLA x global batch 32 / 1,024 accumulated) it prints the
examples/s of each backend and the ratio JAX / TF (median [min, max] over the rounds),
and the sequence lengths JAX compiled a program for.  The host's float32 matmul GFLOP/s
is printed first (hosts differ 2-5x).

    .venv/bin/python benchmarks/bench_backends.py                  # ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_backends.py --batches 32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import PipeWorker, Rounds, alternated, machine, numpy_matmul_gflops  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(backend: str, variants: list[str], args: argparse.Namespace) -> PipeWorker:
    """``backend_worker.py`` under ``KERAS_BACKEND=backend``, built and warm."""
    cmd = [sys.executable, os.path.join(HERE, "backend_worker.py"), "--variants", *variants,
           "--batches-per-variant", str(args.batches_per_variant),
           "--micro-batch-size", str(args.micro_batch_size)]  # fmt: skip
    return PipeWorker(backend, cmd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 1024])
    p.add_argument("--methods", nargs="+", default=["baseline", "scala"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", default="32:6,1024:1", help="timed steps per round, per batch")
    p.add_argument("--batches-per-variant", type=int, default=2)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--quiet-threshold", type=float, default=0.25)
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    steps = {int(k): int(v) for k, v in (s.split(":") for s in args.steps.split(","))}
    variants = [f"{m}/{b}" for b in args.batches for m in args.methods]
    gflops = numpy_matmul_gflops()
    print(f"[bench] host {machine()} float32 matmul {gflops:.0f} GFLOP/s", flush=True)
    workers = {b: worker(b, variants, args) for b in ("tensorflow", "jax")}
    print(f"[bench] JAX programs per variant (sequence lengths): {workers['jax'].info['lengths']}")
    results = {}
    for variant in variants:
        batch = int(variant.split("/")[1])
        count = steps.get(batch, 1)
        rounds = Rounds(args.rounds, args.quiet_threshold)
        while rounds.more():
            timed = alternated(workers, variant, count, len(rounds.rows))
            speed = {b: count * batch / s for b, (s, _) in timed.items()}
            rounds.add(tf=speed["tensorflow"], jax=speed["jax"],
                       ratio=speed["jax"] / speed["tensorflow"],
                       others=max(o for _, o in timed.values()))  # fmt: skip
        stat = {k: rounds.stat(k) for k in ("tf", "jax", "ratio")}
        results[variant] = {**stat, "rounds": rounds.count()}
        r = stat["ratio"]
        print(f"[bench] {variant:>14}: TF {stat['tf']['median']:7.1f} ex/s, JAX "
              f"{stat['jax']['median']:7.1f} ex/s, JAX/TF {r['median']:.2f} "
              f"[{r['min']:.2f}, {r['max']:.2f}] ({rounds.count()})", flush=True)  # fmt: skip
    for process in workers.values():  # (not `worker`: that name is the function above)
        process.close()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"host_matmul_gflops": gflops, "machine": machine(), "results": results,
                       "jax_lengths": workers["jax"].info["lengths"]}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
