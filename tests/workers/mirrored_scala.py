"""MirroredStrategy worker for tests/test_scala_distributed.py: ScaLA on 2 logical CPUs.

``--backend mirrored`` makes 2 replicas; each replica's compiled loss is scaled by
Keras and the hand-added regulariser by ``distribution_loss_scale()`` (1/2), the
optimizer sums replica gradients, so the update must equal ``--backend single``
on the same global batches. Writes ``{backend}.npz``.
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

    import keras
    import numpy as np

    from adv_large_batch.distributed import get_backend
    from adv_large_batch.scala import ScaLA, ScaLAConfig
    from tests.tiny_bert import tiny_classifier, token_batch

    dist = get_backend(args.backend)
    config = ScaLAConfig(
        adv_target="labels", init="zero", step_norm="linf", eps=1e-2, step_size=1e-1, start_step=1
    )
    with dist.scope():
        model = ScaLA(tiny_classifier(seed=10), config, micro_batch_size=4, backend=dist)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    x, y = token_batch(STEPS * GLOBAL_BATCH, seed=5)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out / f"{args.backend}.npz",
        *[v.numpy() for v in model.network.trainable_variables],
        replicas=dist.num_replicas_in_sync,
        iterations=int(model.optimizer.iterations.numpy()),
        regulariser=history.history["regulariser"][0],
    )


if __name__ == "__main__":
    main()
