"""Horovod worker for tests/scala/test_scala_distributed.py: ScaLA's default configuration
on 2 ranks.

The default configuration with dropout on: LAMB, the probs target (symmetric KL against
the model's own detached probabilities), a uniform random start, PGA-1 with the l-inf
step, dropout 0.1 in the encoder and before the head.  Each rank starts from different
weights (seed + rank) that ``BroadcastCallback`` replaces with rank 0's.

Data (``scala_batches``): every global batch is sorted by sequence length and rank r
takes its contiguous slice r, so ScaLA's sort-by-length inside the step changes nothing
and rank r's micro-batch j is the one process's micro-batch ``2 r + j`` of the same
global batch.  Every random draw (dropout masks, random start) is keyed by the batch
counter and the global micro-batch index, so the 2 ranks must end where 1 process
accumulating 4 micro-batches ends (run alone with ``--batch`` = 2 x per-rank batch).

``--same-data``: both ranks get the *same* batches; each rank writes its local (not yet
averaged) regulariser and task loss: they differ only if the ranks draw different masks
and starts.  Writes ``weights_rank{r}.npz``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from adv_large_batch.engine.distributed import BroadcastCallback, MetricAverageCallback, get_backend
from adv_large_batch.optimizers import LAMB  # noqa: E402
from adv_large_batch.scala import ScaLA, ScaLAConfig  # noqa: E402
from tests.tiny_bert import tiny_classifier, token_batch  # noqa: E402

STEPS, MICRO, GLOBAL = 3, 4, 16
# The default ScaLA flags, with a radius the tiny model's float32 logits resolve.
CONFIG = ScaLAConfig(eps=1e-2, step_size=1e-1, start_step=1)


def scala_batches(steps: int, global_batch: int, seed: int = 5) -> tuple[dict, np.ndarray]:
    """``steps`` global batches, each sorted by length (ties keep their order)."""
    x, y = token_batch(steps * global_batch, seed=seed)
    order = []
    for s in range(steps):
        rows = np.arange(s * global_batch, (s + 1) * global_batch)
        lengths = x["padding_mask"][rows].sum(axis=1)
        order.extend(rows[np.argsort(lengths, kind="stable")])
    order = np.asarray(order)
    return {k: v[order] for k, v in x.items()}, y[order]


def rank_slices(x: dict, y: np.ndarray, global_batch: int, rank: int, size: int) -> tuple:
    """Rank ``rank``'s contiguous slice of every global batch, in step order."""
    per = global_batch // size
    rows = np.concatenate(
        [np.arange(s + rank * per, s + (rank + 1) * per) for s in range(0, len(y), global_batch)]
    )
    return {k: v[rows] for k, v in x.items()}, y[rows]


def build(rank: int, dist) -> ScaLA:  # noqa: ANN001
    model = ScaLA(
        tiny_classifier(seed=10 + rank, dropout=0.1),
        CONFIG,
        micro_batch_size=MICRO,
        backend=dist,
        seed=3,
    )
    model.compile(
        optimizer=LAMB(1e-2, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, required=True, help="per-rank batch")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--same-data", action="store_true")
    args = parser.parse_args()
    dist = get_backend()
    model = build(dist.rank, dist)
    global_batch = args.batch * dist.size
    x, y = scala_batches(STEPS, global_batch)
    if not args.same_data:
        x, y = rank_slices(x, y, global_batch, dist.rank, dist.size)
    else:
        x, y = rank_slices(x, y, global_batch, 0, dist.size)  # rank 0's slice on every rank
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch)
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
        local_regulariser=float(model.reg_tracker.result()),
        local_regulariser_y0=float(model.reg_start_tracker.result()),
        local_task_loss=float(model.task_loss_tracker.result()),
        iterations=int(model.optimizer.iterations.numpy()),
        batches_seen=int(model.batches_seen.numpy()),
    )
    print(f"rank {dist.rank}/{dist.size}: {history.history}", flush=True)


if __name__ == "__main__":
    main()
