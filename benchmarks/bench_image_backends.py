"""Side by side: ConAdv's image training schedules on the TensorFlow and the JAX backend.

Two persistent worker processes (``image_backend_worker.py``, one per backend: a process
holds one Keras backend; the JAX one with TensorFlow blocked) build the same trainers:
``adv_large_batch.conadv.ConAdv`` on a CIFAR ResNet (``cifar_resnet20``, width 16, 32 x 32
x 3 by default), LARS, per-device batch 256 in micro-batches of 128, one trainer per
schedule:

* ``baseline``: the clean loss on the batch;
* ``disadv``: PGD-1 on the batch with the current weights, then the update over
  [clean; adversarial];
* ``separate``: ConAdv tau = 1, the update on the batch and the adversarial examples made
  one step earlier, beside it the next batch's PGD-1 (DisAdv's FLOPs, no dependency
  between the two);
* ``shared``: ConAdv's shared pass, one forward/backward over [clean t+1; adversarial t]
  gives the update and the next examples (FGSM from the clean rows' input gradient);
* ``separate-tau2``: ConAdv tau = 2.

Every schedule gets the same seeded random images in [0, 1] on both backends, stepped
with ``train_on_batch``; the warm-up (compile / trace and the first tau steps of a buffered
schedule) is never timed.  In each round every schedule runs ``--steps`` steps on one
backend while the other worker waits on its pipe, then on the other; which backend goes
first alternates (by round and by schedule), so each has the cores in turn and slow drifts
of a shared machine hit both.  Before a round it waits (``--quiet-wait`` s at most) for the
rest of the machine to use less than ``--quiet-threshold`` of the cores, and a round during
which other processes used more is repeated (``bench_common.Rounds``); with ``--budget-s``
no round starts once that much time has gone into timing.

Printed: the host's float32 matmul GFLOP/s (NumPy) first; each round's step times; then
per schedule the images/s of each backend (the b clean images of a step per step time)
and JAX / TF; per backend the step-time ratios shared / DisAdv, separate / DisAdv and
separate-tau2 / DisAdv (below 1: faster than DisAdv); all medians [min, max] over the
rounds of within-round ratios; and each worker's warm-up seconds (compile included).

    .venv/bin/python benchmarks/bench_image_backends.py --rounds 3 --steps 3
    .venv/bin/python benchmarks/bench_image_backends.py --image-shape 28 28 1   # Fashion-MNIST
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import (  # noqa: E402
    PipeWorker,
    Rounds,
    alternated,
    machine,
    numpy_matmul_gflops,
    wait_for_quiet,
)
from image_backend_worker import SCHEDULES  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = {"tensorflow": "TF", "jax": "JAX"}
#: the within-backend step-time ratios, each against DisAdv
AGAINST = "disadv"


def worker(backend: str, args: argparse.Namespace) -> PipeWorker:
    """``image_backend_worker.py`` under ``KERAS_BACKEND=backend``, started (not waited for:
    the two workers build and compile side by side, before any timing)."""
    cmd = [sys.executable, os.path.join(HERE, "image_backend_worker.py"),
           "--variants", *args.schedules, "--model", args.model, "--width", str(args.width),
           "--image-shape", *map(str, args.image_shape), "--batch", str(args.batch),
           "--micro-batch-size", str(args.micro_batch_size), "--warmup", str(args.warmup),
           "--batches-per-variant", str(args.batches_per_variant)]  # fmt: skip
    if backend == "jax":
        cmd.append("--no-tensorflow")
    return PipeWorker(backend, cmd, wait=False)


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['median']:.2f} [{stat['min']:.2f}, {stat['max']:.2f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-shape", type=int, nargs=3, default=[32, 32, 3])
    p.add_argument("--batch", type=int, default=256, help="per-device batch")
    p.add_argument("--micro-batch-size", type=int, default=128, help="0: the whole batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per schedule per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per schedule")
    p.add_argument("--batches-per-variant", type=int, default=2)
    p.add_argument("--quiet-threshold", type=float, default=0.25)
    p.add_argument("--quiet-wait", type=float, default=30.0, help="s to wait before a round")
    p.add_argument("--budget-s", type=float, default=None,
                   help="no round starts after this many s of timing (the tables use the "
                        "rounds done)")  # fmt: skip
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if AGAINST not in args.schedules:
        p.error(f"--schedules needs {AGAINST} (the ratios are against it)")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    gflops = numpy_matmul_gflops()
    print(f"[images] {started} host {machine()} float32 matmul {gflops:.0f} GFLOP/s; "
          f"{args.model} width {args.width} on {tuple(args.image_shape)}, batch {args.batch}, "
          f"micro-batch {args.micro_batch_size or 'none'}, LARS", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    workers = {b: worker(b, args) for b in BACKENDS}
    for w in workers.values():
        w.ready()
    print(f"[images] workers ready in {time.perf_counter() - t0:.0f} s; warm-up s (compile "
          "included): " + "; ".join(f"{BACKENDS[b]} " + ", ".join(
              f"{v} {s:.0f}" for v, s in w.info["warmup_s"].items())
              for b, w in workers.items()), flush=True)  # fmt: skip
    others_vs = [v for v in args.schedules if v != AGAINST and v != "baseline"]
    rounds, timing = Rounds(args.rounds, args.quiet_threshold), time.perf_counter()
    while rounds.more():
        if args.budget_s is not None and rounds.rows:
            if time.perf_counter() - timing > args.budget_s:
                print(f"[images] --budget-s spent: stopped after {len(rounds.rows)} rounds")
                break
        if args.quiet_wait > 0:
            wait_for_quiet(args.quiet_threshold, args.quiet_wait)
        row, load = {}, []
        for i, variant in enumerate(args.schedules):
            timed = alternated(workers, variant, args.steps, len(rounds.rows) + i)
            for backend, (seconds, others) in timed.items():
                row[f"{backend}/{variant}"] = seconds / args.steps
                load.append(others)
            row[f"jax/tf/{variant}"] = row[f"tensorflow/{variant}"] / row[f"jax/{variant}"]
        for backend in BACKENDS:
            for variant in others_vs:
                row[f"{backend}/{variant}/{AGAINST}"] = (
                    row[f"{backend}/{variant}"] / row[f"{backend}/{AGAINST}"]
                )
        row["others"] = max(load)
        rounds.add(**row)
        print(f"[images] round {len(rounds.rows) - 1} (others {row['others']:.0%}): " + "; ".join(
            f"{BACKENDS[b]} " + " ".join(f"{v} {row[f'{b}/{v}']:.2f}" for v in args.schedules)
            for b in BACKENDS) + " s/step", flush=True)  # fmt: skip
    for w in workers.values():
        w.close()

    images = {
        f"{b}/{v}": args.batch / rounds.stat(f"{b}/{v}")["median"]
        for b in BACKENDS
        for v in args.schedules
    }
    print(f"\nrounds: {rounds.count()} (others > {args.quiet_threshold:.0%} of the cores: "
          "not clean)\n")  # fmt: skip
    print("| schedule | TF img/s | JAX img/s | JAX / TF, median [min, max] |")
    print("|---|---|---|---|")
    for v in args.schedules:
        print(f"| {v} | {images[f'tensorflow/{v}']:.0f} | {images[f'jax/{v}']:.0f} | "
              f"{fmt(rounds.stat(f'jax/tf/{v}'))} |")  # fmt: skip
    print("\n| backend | " + " | ".join(f"{v} / DisAdv" for v in others_vs) + " |")
    print("|---|" + "---|" * len(others_vs))
    for b, name in BACKENDS.items():
        cells = [fmt(rounds.stat(f"{b}/{v}/{AGAINST}")) for v in others_vs]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(step-time ratios, median [min, max] over the rounds; below 1: faster than DisAdv)")
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump({"date": started, "machine": machine(), "host_matmul_gflops": gflops,
                       "args": vars(args), "images_per_s": images,
                       "warmup_s": {b: w.info["warmup_s"] for b, w in workers.items()},
                       "stats": {k: rounds.stat(k) for k in rounds.rows[0] if k != "others"},
                       "rounds": rounds.rows}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
