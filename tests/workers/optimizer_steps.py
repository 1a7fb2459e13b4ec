"""Five optimizer steps on fixed weights and gradients, on whichever Keras backend
``KERAS_BACKEND`` names: ``python tests/workers/optimizer_steps.py OUT.npz [--no-tensorflow]``.

For the cross-backend test (``tests/optimizers/test_backends.py``): every optimizer of
``--optimizer`` with its default schedule (warm-up then decay) and parameter groups (no
weight decay on biases and LayerNorm, no layer adaptation there for LAMB / LARS), on a
Dense + LayerNormalization network whose weights and five gradient sets come from NumPy
with a fixed seed.  ``OUT.npz`` gets the weights after each step, keyed
``<optimizer>/<step>/<variable path>``.  ``--no-tensorflow`` makes importing TensorFlow
fail, to show the optimizers need none on the JAX backend.
"""

from __future__ import annotations

import sys

OPTIMIZERS = ("lamb", "lars", "adamw", "sgd")
STEPS = 5


def network():  # noqa: ANN201
    import keras
    import numpy as np

    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="dense"),
            keras.layers.LayerNormalization(name="layer_norm"),
        ]
    )
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return model


def main(out: str) -> None:
    import keras
    import numpy as np

    from adv_large_batch.optimizers import OptimizerConfig, build_optimizer

    results = {}
    for name in OPTIMIZERS:
        model = network()
        variables = model.trainable_variables
        optimizer = build_optimizer(
            OptimizerConfig(optimizer=name, lr=1e-2, weight_decay=0.01),
            total_steps=10,
            global_batch_size=32,
        )
        rng = np.random.default_rng(1)
        for step in range(STEPS):
            grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
                     for v in variables]  # fmt: skip
            optimizer.apply(grads, variables)
            for v in variables:
                results[f"{name}/{step}/{v.path}"] = keras.ops.convert_to_numpy(v.value)
    np.savez(out, backend=np.array(keras.config.backend()), **results)


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        import no_tensorflow  # tests/workers/, this script's folder

        no_tensorflow.block()
    main(sys.argv[1])
