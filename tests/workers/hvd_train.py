"""Horovod worker for tests/engine/test_distributed.py (run by ``horovodrun -np 2 --gloo``, or
alone).

``--mode train``: every rank starts from different weights (seed + rank), BroadcastCallback makes
them rank 0's, ``backend.shard`` gives rank r the per-rank batches r, r + size, ... and the
``train_step`` averages gradients with ``backend.allreduce_gradients``. With plain SGD that is
the same update as one process on the union of the ranks' batches (run alone with a ``--batch``
of size x per-rank batch). Writes ``weights_rank{r}.npz``.

``--mode broadcast``: each rank takes rank-specific Adam steps (rank r takes r + 1 steps on its
own data, so weights, slots and iteration counts differ), then ``backend.broadcast_variables``
on model + optimizer variables. Writes ``before_rank{r}.npz`` and ``after_rank{r}.npz`` (the
latter also with ``allreduce_gradients`` of an IndexedSlices, a None and a dense tensor).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import tensorflow as tf
from common import build_model, make_data, save_variables

from adv_large_batch.engine.distributed import BroadcastCallback, MetricAverageCallback, get_backend

STEPS = 6
PER_RANK_BATCH = 4
GLOBAL_BATCH = 2 * PER_RANK_BATCH


class RecordLogs(keras.callbacks.Callback):
    """A copy of the epoch-end logs as the callbacks before it left them."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.logs = dict(logs or {})


def train(out: Path, batch: int) -> None:
    dist = get_backend()
    model = build_model(
        dist, seed=1234 + 1000 * dist.rank, make_optimizer=lambda: keras.optimizers.SGD(0.1)
    )
    x, y = make_data(STEPS * GLOBAL_BATCH)
    dataset = dist.shard(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch))
    local, averaged = RecordLogs(), RecordLogs()
    callbacks = [BroadcastCallback(), local, MetricAverageCallback(), averaged]
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    iterations = int(model.optimizer.iterations.numpy())
    print(f"rank {dist.rank}/{dist.size}: {iterations} steps, {local.logs} -> {averaged.logs}")
    save_variables(
        out / f"weights_rank{dist.rank}.npz",
        model.trainable_variables,
        size=dist.size,
        iterations=iterations,
        local_loss=local.logs["loss"],
        loss=averaged.logs["loss"],
    )


def broadcast(out: Path) -> None:
    dist = get_backend()
    model = build_model(
        dist, seed=7 + dist.rank, make_optimizer=lambda: keras.optimizers.Adam(0.01)
    )
    x, y = make_data(PER_RANK_BATCH, seed=100 + dist.rank)
    for _ in range(dist.rank + 1):
        with tf.GradientTape() as tape:
            loss = model.local_loss(x, y)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)
    variables = list(model.variables) + list(model.optimizer.variables)
    save_variables(out / f"before_rank{dist.rank}.npz", variables)
    dist.broadcast_variables(variables, root_rank=0)
    dist.barrier()

    @tf.function
    def reduce(scale: tf.Tensor) -> list:  # IndexedSlices and None among the "gradients"
        sparse = tf.IndexedSlices(tf.fill((1, 2), scale), tf.constant([1]), tf.constant([3, 2]))
        return dist.allreduce_gradients([sparse, None, tf.fill((2,), scale)])

    sparse_mean, none, dense_mean = reduce(tf.constant(float(dist.rank + 1)))
    save_variables(
        out / f"after_rank{dist.rank}.npz",
        variables,
        sparse_mean=sparse_mean.numpy(),
        none_kept=none is None,
        dense_mean=dense_mean.numpy(),
    )
    print(f"rank {dist.rank}: broadcast {len(variables)} variables", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", choices=("train", "broadcast"), default="train")
    parser.add_argument("--batch", type=int, default=PER_RANK_BATCH, help="per-process batch")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "train":
        train(args.out, args.batch)
    else:
        broadcast(args.out)


if __name__ == "__main__":
    main()
