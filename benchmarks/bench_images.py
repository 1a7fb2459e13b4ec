"""Image path speed: the step of every ConAdv schedule side by side, and the input pipeline.

On real Fashion-MNIST (28x28x1) with the small ResNet (``cifar_resnet20``, width 16)
and LARS, for each per-device batch size b it builds five trainers
(``adv_large_batch.conadv.ConAdv``):

* ``baseline``: clean loss on b rows;
* ``baseline_2b``: clean loss on 2b rows (one forward/backward over as many rows as an
  adversarial step's update: the floor of any method that trains on b clean + b
  adversarial rows);
* ``disadv``: attack (forward + input backward over b rows), then the update over 2b;
* ``separate``: ConAdv, the next batch's attack beside the update (DisAdv's FLOPs);
* ``shared``: ConAdv, one forward/backward over [clean t+1; adversarial t] (2b rows)
  gives the update and the next attack's input gradient;

then alternates them round after round, each running ``--steps`` compiled training steps
on in-memory batches (ConAdv on the paired stream it trains on), and prints images/s
of each and the step-time ratios shared / DisAdv, shared / baseline_2b, separate /
DisAdv and DisAdv / baseline (medians over rounds of within-round ratios, with min
and max; rounds where other processes used more than ``--quiet-threshold`` of the
cores are redone).  The host's float32 matmul GFLOP/s is measured and printed with it.

It also times the real training input pipeline alone (``image_pipeline.train_stream``
with the seeded flip-and-crop augmentation, paired with ``pair_with_future`` as
ConAdv consumes it) and reports its images/s as a multiple of the fastest step's.

    .venv/bin/python benchmarks/bench_images.py --json-out runs/bench/bench_images.json

On a CPU the two attacks of ConAdv and the update share the same cores: ConAdv's
concurrency (the attack on batch t+1 does not wait for the update on batch t) can
only pay off where one step leaves cores idle, i.e. small per-device batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import Rounds, machine, timed_call, wait_for_quiet  # noqa: E402

#: variant -> (ConAdv method, attack pass, rows per step as a multiple of b)
VARIANTS: dict[str, tuple[str, str, int]] = {
    "baseline": ("baseline", "separate", 1),
    "baseline_2b": ("baseline", "separate", 2),
    "disadv": ("disadv", "separate", 1),
    "separate": ("conadv", "separate", 1),
    "shared": ("conadv", "shared", 1),
}
METHODS = tuple(VARIANTS)
RATIOS = {
    "shared/disadv": ("shared", "disadv"),
    "shared/baseline_2b": ("shared", "baseline_2b"),
    "separate/disadv": ("separate", "disadv"),
    "disadv/baseline": ("disadv", "baseline"),
}


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """float32 GFLOP/s of an n x n matmul on this host (median of ``repeats``)."""
    import statistics

    import tensorflow as tf

    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    (a @ b).numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        (a @ b).numpy()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def conadv_trainer(
    method: str,
    image_shape: tuple[int, ...],
    batch: int,
    model: str,
    width: int,
    attack_pass: str = "separate",
) -> Any:
    """A compiled ``ConAdv`` trainer (``--method``) on a fresh small ResNet, LARS."""
    import keras

    from adv_large_batch.conadv import ConAdv, ConAdvConfig
    from adv_large_batch.models.image_models import build_image_model
    from adv_large_batch.optimizers import LARS

    keras.utils.set_random_seed(0)
    cfg = ConAdvConfig(method=method, eps=3.0, attack_pass=attack_pass)
    network = build_image_model(model, image_shape, 10, split_bn=cfg.adversarial, width=width)
    trainer = ConAdv(network, cfg, batch_size=batch if cfg.buffered else None)
    trainer.compile(
        optimizer=LARS(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    trainer.make_train_function()
    return trainer


def stepper(trainer: Any, iterator: Any, steps: int) -> Callable[[], float]:
    """A callable running ``steps`` compiled steps; called twice here (trace, optimizer
    state, ConAdv's buffer) so that later calls time steady-state steps."""

    def call() -> float:
        logs = None
        for _ in range(steps):
            logs = trainer.train_function(iterator)
        return float(np.asarray(logs["loss"]))

    call()
    call()
    return call


def augmented_stream(split: Any, arrays: tuple[np.ndarray, np.ndarray], batch: int) -> Any:
    """The real ConAdv training stream: seeded flip-and-crop, paired t / t + 1."""
    from adv_large_batch.conadv import pair_with_future
    from adv_large_batch.data import image_pipeline

    augment = image_pipeline.seeded_augmenter("flip_crop", arrays[0].shape[1:], 0)
    stream = image_pipeline.train_stream(split, len(arrays[0]), batch, 0, augment, arrays=arrays)
    return pair_with_future(stream, 1)


def build_trainers(
    args: argparse.Namespace, arrays: tuple[np.ndarray, np.ndarray], batch: int
) -> dict[str, Callable[[], Any]]:
    """One compiled trainer per method on in-memory batches, each a callable of ``--steps``."""
    import tensorflow as tf

    from adv_large_batch.conadv import pair_with_future

    images, labels = arrays[0].astype(np.float32) / 255.0, arrays[1]  # as train_stream feeds
    calls = {}
    for variant, (method, attack_pass, rows) in VARIANTS.items():
        size = batch * rows
        n = (len(images) // size) * size
        base = tf.data.Dataset.from_tensor_slices((images[:n], labels[:n])).batch(
            size, drop_remainder=True
        )
        trainer = conadv_trainer(
            method, images.shape[1:], size, args.model, args.width, attack_pass
        )
        ds = base.cache().repeat()
        if trainer.config.buffered:
            ds = pair_with_future(ds, trainer.config.staleness)
        calls[variant] = stepper(trainer, iter(ds.prefetch(2)), args.steps)
    return calls


def pipeline_images_per_s(
    args: argparse.Namespace, split: Any, arrays: tuple[np.ndarray, np.ndarray], batch: int
) -> float:
    """images/s of the real training stream (flip_crop, paired) with nothing consuming it."""
    iterator = iter(augmented_stream(split, arrays, batch))
    for _ in range(3):
        next(iterator)
    count = max(args.steps * 4, 2048 // batch)
    t0 = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--train-limit", type=int, default=8192)
    p.add_argument("--steps", type=int, default=4, help="steps per method per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quiet-threshold", type=float, default=0.15)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    bad = [b for b in args.batch_sizes if b < 1 or b * 2 > args.train_limit]
    if bad or args.steps < 1 or args.rounds < 1:
        p.error(f"need batch sizes in [1, train_limit / 2] (got {bad}), --steps/--rounds >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from adv_large_batch.data import image_datasets, image_pipeline

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    gflops = matmul_gflops()
    print(
        f"[images] {started} machine {machine()} model {args.model} width {args.width}; "
        f"host float32 matmul {gflops:.0f} GFLOP/s"
    )
    data = image_datasets.load_image_dataset("fashion_mnist").limit(args.train_limit, None)
    arrays = image_pipeline.materialize(data.train, data.num_train, data.image_shape)
    results: dict[str, Any] = {
        "date": started,
        "machine": machine(),
        "matmul_gflops": gflops,
        "args": vars(args),
    }
    lines = []
    for batch in args.batch_sizes:
        calls = build_trainers(args, arrays, batch)
        for call in calls.values():  # an untimed round: the first calls after the others'
            call()  # tracing still run slow (see the round-0 outliers in docs/results.md)
        rounds = Rounds(args.rounds, args.quiet_threshold)
        while rounds.more():
            wait_for_quiet(args.quiet_threshold, 30.0)
            row, load = {}, []
            for method, call in calls.items():
                seconds, others = timed_call(call)
                row[method] = seconds / args.steps
                load.append(others)
            for name, (num, den) in RATIOS.items():
                row[name] = row[num] / row[den]
            row["others"] = max(load)
            rounds.add(**row)
            print(
                f"[images] batch {batch} round {len(rounds.rows) - 1}: "
                + ", ".join(f"{m} {row[m]:.3f} s" for m in METHODS)
                + ", "
                + ", ".join(f"{r} {row[r]:.2f}" for r in RATIOS)
                + f" (others {row['others']:.0%})"
            )
        pipe = pipeline_images_per_s(args, data.train, arrays, batch)
        med = {m: rounds.stat(m)["median"] for m in METHODS}
        # images/s counts the clean images of the batch (b; 2b for baseline_2b)
        per_s = {m: batch * VARIANTS[m][2] / s for m, s in med.items()}
        stats = {r: rounds.stat(r) for r in RATIOS}
        results[str(batch)] = {
            "seconds_per_step": med,
            "images_per_s": per_s,
            **stats,
            "pipeline_images_per_s": pipe,
            "pipeline/fastest_step": pipe / max(per_s.values()),
            "rounds": rounds.rows,
        }
        lines.append(
            f"| {batch} | "
            + " | ".join(f"{med[m]:.3f}" for m in METHODS)
            + " | "
            + " | ".join(
                f"{stats[r]['median']:.2f} [{stats[r]['min']:.2f}, {stats[r]['max']:.2f}]"
                for r in RATIOS
            )
            + f" | {pipe:.0f} ({pipe / max(per_s.values()):.1f}x) | {rounds.count()} |"
        )
    print(
        "\n| per-device batch b | "
        + " | ".join(f"{m} s/step" for m in METHODS)
        + " | "
        + " | ".join(f"{r} [min, max]" for r in RATIOS)
        + " | input pipeline img/s (x fastest step) | rounds |"
    )
    print("|" + "---|" * (3 + len(METHODS) + len(RATIOS)))
    print("\n".join(lines))
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
