"""One Keras backend's side of ``bench_backends.py``: a persistent process (its backend
from ``KERAS_BACKEND``) that builds the bundled MiniLM classifier, tokenises real Rotten
Tomatoes snippets once and answers JSON lines on stdin:

    {"op": "run", "variant": "scala/32", "count": 8}  ->  {"seconds": ..., "cpu_s": ...}

Each variant (method x global batch) is a ScaLA trainer (``method="baseline"`` or
``"scala"``, PGA-1 on from step 0, LAMB) with micro-batches of ``--micro-batch-size``; it
steps through its own fixed batches, round-robin.  TensorFlow trims each micro-batch to
its longest sequence inside the step (one traced graph); JAX gets each batch padded to a
length bucket (16/32/64), one compiled program per bucket; ``programs`` reports them.
Every batch is stepped once during the warm-up, so compilation is never timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np
from bench_common import serve_steps  # this folder is on the path of a script run here

BUCKETS = (16, 32, 64, 128)


def bucketed(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``x`` cut to the smallest bucket that holds its longest sequence."""
    longest = int(x["padding_mask"].sum(axis=1).max())
    length = next((b for b in BUCKETS if b >= longest), x["token_ids"].shape[1])
    return {k: v[:, :length] for k, v in x.items()}


def build(variant: str, network_args: dict, micro: int) -> Any:
    import keras

    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier
    from adv_large_batch.optimizers import LAMB
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    method, _ = variant.split("/")
    network = PerturbableBertClassifier.from_preset("bundled", **network_args)
    model = ScaLA(network, ScaLAConfig(method=method, start_step=0), micro_batch_size=micro, seed=0)
    model.compile(optimizer=LAMB(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))  # fmt: skip
    return model


def main() -> None:
    import keras

    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="+", required=True)  # method/batch
    p.add_argument("--batches-per-variant", type=int, default=4)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args()
    from adv_large_batch.data import text_tasks

    network_args = {"num_classes": 2, "sequence_length": args.max_length, "seed": 0}
    jax = keras.config.backend() == "jax"
    models, data, cursor = {}, {}, {}
    split = None
    for variant in args.variants:
        batch = int(variant.split("/")[1])
        models[variant] = build(variant, network_args, args.micro_batch_size)
        need = batch * args.batches_per_variant
        if split is None or len(split) < need:
            split = text_tasks.load_task("rotten_tomatoes").train.take(need)
            features = models[variant].network.preprocessor.encode(split.texts)
        batches = []
        for i in range(args.batches_per_variant):
            rows = slice(i * batch, (i + 1) * batch)
            x = {k: v[rows] for k, v in features.items()}
            batches.append((bucketed(x) if jax else x, split.labels[rows].astype("int32")))
        data[variant], cursor[variant] = batches, 0
        for x, y in batches:  # warm-up: every shape compiles here, never in a timed run
            models[variant].train_on_batch(x, y)
    shapes = {v: sorted({b[0]["token_ids"].shape[1] for b in data[v]}) for v in data}
    print(json.dumps({"ready": True, "backend": keras.config.backend(), "lengths": shapes}),
          flush=True)  # fmt: skip
    serve_steps(models, data, cursor)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
