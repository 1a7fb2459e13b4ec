"""MirroredStrategy worker for tests/scala/test_scala_distributed.py: ScaLA's default configuration
(LAMB, probs target, uniform start, dropout 0.1; ``hvd_scala.CONFIG``) on 2 logical CPUs.

``--backend mirrored`` makes 2 replicas; replica r gets the contiguous half r of every
global batch of 16 (each batch sorted by length, ``hvd_scala.scala_batches``), so its
micro-batch j is the single device's micro-batch ``2 r + j``.  Each replica's compiled
loss is scaled by Keras and the hand-added regulariser by ``distribution_loss_scale()``
(1/2), the trainer all-reduces the gradients once, and every random draw is keyed by the
batch counter and the global micro-batch index, so the update must equal ``--backend
single`` on the same global batches, dropout masks and random starts included.
Writes ``{backend}.npz``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

GLOBAL_BATCH = 16
STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backend", choices=("mirrored", "single"), required=True)
    args = parser.parse_args()
    if args.backend == "mirrored":  # before anything initialises the TF runtime
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )

    import numpy as np

    from adv_large_batch.engine.distributed import get_backend
    from tests.workers.hvd_scala import build, scala_batches

    dist = get_backend(args.backend)
    with dist.scope():
        model = build(0, dist)
    x, y = scala_batches(STEPS, GLOBAL_BATCH)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out / f"{args.backend}.npz",
        *[v.numpy() for v in model.network.trainable_variables],
        replicas=dist.num_replicas_in_sync,
        iterations=int(model.optimizer.iterations.numpy()),
        regulariser=history.history["regulariser"][0],
        grad_norm=history.history["grad_norm"][0],
    )


if __name__ == "__main__":
    main()
