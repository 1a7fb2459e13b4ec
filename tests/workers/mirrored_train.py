"""MirroredStrategy worker for tests/engine/test_distributed.py.

``--backend mirrored`` splits the CPU into 2 logical devices (2 replicas) and trains the shared
model with ``model.fit`` on global batches; each replica's hand-written loss is multiplied by
``backend.loss_scale()`` (1/2) and the Keras optimizer sums the replicas' gradients, so the
update must equal ``--backend single`` on the same global batches. Writes ``{backend}.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tensorflow as tf

REPLICAS = 2
STEPS = 6
GLOBAL_BATCH = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backend", choices=("mirrored", "single"), required=True)
    args = parser.parse_args()

    if args.backend == "mirrored":  # before anything initialises the TF runtime
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
        )

    import keras
    from common import build_model, make_data, save_variables

    from adv_large_batch.engine.distributed import get_backend

    dist = get_backend(args.backend)
    model = build_model(dist, seed=1234, make_optimizer=lambda: keras.optimizers.SGD(0.1))
    x, y = make_data(STEPS * GLOBAL_BATCH)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    iterations = int(model.optimizer.iterations.numpy())
    print(f"{dist}: {iterations} steps", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_variables(
        args.out / f"{args.backend}.npz",
        model.trainable_variables,
        replicas=dist.num_replicas_in_sync,
        iterations=iterations,
    )


if __name__ == "__main__":
    main()
