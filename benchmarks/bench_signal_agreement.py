"""The per-step cost of preemption's agreement: one scalar all-reduce (``allreduce_mean``)
under Horovod, the collective ``PreemptionCheckpoint`` runs after every training step.

    .venv/bin/horovodrun -np 2 -H localhost:2 --gloo \\
        .venv/bin/python benchmarks/bench_signal_agreement.py --calls 300

Prints milliseconds per call on rank 0 (compare with the step time of the run).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    from adv_large_batch.engine.distributed import get_backend

    backend = get_backend("horovod")
    for _ in range(20):  # warm-up
        backend.allreduce_mean(0.0)
    start = time.perf_counter()
    for _ in range(args.calls):
        float(backend.allreduce_mean(0.0))
    per_call = 1e3 * (time.perf_counter() - start) / args.calls
    if backend.is_chief:
        print(f"scalar allreduce_mean over {backend.size} ranks: {per_call:.2f} ms per call")


if __name__ == "__main__":
    main()
