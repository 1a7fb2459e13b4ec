"""Horovod worker for tests/test_scala_distributed.py: ScaLA's train_step on 2 ranks.

Each rank starts from different weights (seed + rank) that ``BroadcastCallback``
replaces with rank 0's; ``backend.shard`` gives rank r the examples r, r + size,
...; every rank accumulates micro-batches of 4, builds its own perturbation
(deterministic here: zero start, ground-truth target, per-example l-inf step) and
the update averages the weight gradients with one grouped allreduce.  Run alone
with ``--batch`` = size x per-rank batch it is the 1-process reference.
Writes ``weights_rank{r}.npz``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from adv_large_batch.distributed import (  # noqa: E402
    BroadcastCallback,
    MetricAverageCallback,
    get_backend,
)
from adv_large_batch.scala import ScaLA, ScaLAConfig  # noqa: E402
from tests.tiny_bert import tiny_classifier, token_batch  # noqa: E402

STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, required=True, help="per-rank batch")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist = get_backend()
    config = ScaLAConfig(
        adv_target="labels", init="zero", step_norm="linf", eps=1e-2, step_size=1e-1, start_step=1
    )
    model = ScaLA(tiny_classifier(seed=10 + dist.rank), config, micro_batch_size=4, backend=dist)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = token_batch(STEPS * args.batch * dist.size, seed=5)
    ds = dist.shard(tf.data.Dataset.from_tensor_slices((x, y))).batch(args.batch)
    history = model.fit(
        ds,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[BroadcastCallback(), MetricAverageCallback()],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out / f"weights_rank{dist.rank}.npz",
        *[v.numpy() for v in model.network.trainable_variables],
        regulariser=history.history["regulariser"][0],
        iterations=int(model.optimizer.iterations.numpy()),
    )
    print(f"rank {dist.rank}/{dist.size}: {history.history}", flush=True)


if __name__ == "__main__":
    main()
