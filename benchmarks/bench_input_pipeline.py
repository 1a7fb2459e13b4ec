"""The input pipelines alone vs the training steps they feed (target: >= 5x faster).

Text: ``text_pipeline.make_epoch_stream`` (the shuffled, sharded, prefetched batches
``finetune`` trains on, from the tokenised split) against our baseline and ScaLA
(PGA-1) fine-tuning steps on the bundled all-MiniLM-L6-v2, real Rotten Tomatoes,
batch 32, max length 64.  The one-off tokenisation of the split (done once before
training) is reported separately.  Images: ``image_pipeline.train_stream`` with the
seeded flip-and-crop augmentation, paired for ConAdv, against the ConAdv step of
``cifar_resnet20`` on real Fashion-MNIST (``bench_images.py`` has the full image table).

Pipeline and step are timed alternately, ``--rounds`` times; a pipeline batch is
pulled with nothing consuming it.  Reported: examples/s of each and the ratio.

    .venv/bin/python benchmarks/bench_input_pipeline.py --json-out runs/bench/input_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine  # noqa: E402


def rate(fn: Callable[[], Any], count: int, rows: int) -> float:
    """rows/s of ``count`` calls of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(count):
        fn()
    return count * rows / (time.perf_counter() - t0)


def text_side(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    import keras

    from adv_large_batch.data import text_pipeline, text_tasks
    from adv_large_batch.models.text_classifiers import build_network, default_model_path
    from adv_large_batch.optimizers import LAMB
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    network, tokenizer = build_network(default_model_path(), 2, 0)
    task = text_tasks.load_task("rotten_tomatoes")
    split = task.train.take(args.text_examples)
    t0 = time.perf_counter()
    feats = text_pipeline.tokenize(split, tokenizer, args.max_length)
    tokenize_rate = len(split) / (time.perf_counter() - t0)
    b = args.text_batch
    stream = text_pipeline.make_epoch_stream(feats, split.labels, b, 1000, seed=0)
    pipe_it = iter(stream)
    train_it = iter(stream)
    calls = {"text pipeline": lambda: next(pipe_it)}
    for method in ("baseline", "scala"):
        model = ScaLA(network, ScaLAConfig(method=method, start_step=0))
        model.compile(
            optimizer=LAMB(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.build_before_tracing(stream.element_spec)
        model.make_train_function()

        def step(model: Any = model) -> Any:
            return np.asarray(model.train_function(train_it)["loss"])

        step()
        step()
        calls[f"text {method} step"] = step
    calls["_tokenize_rate"] = tokenize_rate
    return calls


def image_side(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    from bench_images import augmented_stream, conadv_trainer, stepper

    from adv_large_batch.data import image_datasets, image_pipeline

    data = image_datasets.load_image_dataset("fashion_mnist").limit(args.image_examples, None)
    arrays = image_pipeline.materialize(data.train, data.num_train, data.image_shape)
    b = args.image_batch
    pipe_it = iter(augmented_stream(data.train, arrays, b))
    train_it = iter(augmented_stream(data.train, arrays, b))
    trainer = conadv_trainer("conadv", data.image_shape, b, "cifar_resnet20", 16)
    return {
        "image pipeline": lambda: next(pipe_it),
        "image conadv step": stepper(trainer, train_it, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text-batch", type=int, default=32)
    p.add_argument("--text-examples", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--image-batch", type=int, default=256)
    p.add_argument("--image-examples", type=int, default=8192)
    p.add_argument("--steps", type=int, default=4, help="training steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    if min(args.text_batch, args.image_batch, args.steps, args.rounds) < 1:
        p.error("batch sizes, --steps and --rounds must be >= 1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"[input] {started} machine {machine()}")
    calls = {**text_side(args), **image_side(args)}
    tokenize_rate = calls.pop("_tokenize_rate")
    rows = {k: [] for k in calls}
    batch = {k: args.text_batch if k.startswith("text") else args.image_batch for k in calls}
    for r in range(args.rounds):
        for name, fn in calls.items():
            count = args.steps * (20 if "pipeline" in name else 1)
            rows[name].append(rate(fn, count, batch[name]))
        print(f"[input] round {r}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rows.items()))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\ntokenising the split once before training: {tokenize_rate:.0f} examples/s")
    print("\n| pipeline | examples/s | fed step | step examples/s | pipeline / step |")
    print("|---|---|---|---|---|")
    table = []
    for pipe, steps in (
        ("text pipeline", ("text baseline step", "text scala step")),
        ("image pipeline", ("image conadv step",)),
    ):
        for step in steps:
            ratio = med[pipe] / med[step]
            table.append({"pipeline": pipe, "step": step, "ratio": ratio})
            print(f"| {pipe} | {med[pipe]:.0f} | {step} | {med[step]:.1f} | {ratio:.0f}x |")
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(
                {
                    "date": started,
                    "machine": machine(),
                    "args": vars(args),
                    "medians": med,
                    "rounds": rows,
                    "tokenize_examples_per_s": tokenize_rate,
                    "table": table,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
