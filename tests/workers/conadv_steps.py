"""ConAdv's train step on whichever Keras backend ``KERAS_BACKEND`` names:
``python tests/workers/conadv_steps.py OUT.npz [--no-tensorflow]``.

For ``tests/conadv/test_conadv_backends.py``: a CIFAR ResNet-8 (width 4, split BN) on
16 x 16 x 3 images, weights from NumPy (seed 0: the same on both backends), LARS with
momentum and weight decay, label smoothing 0.1, batches of 8 images in micro-batches of 4,
and for each schedule of ``VARIANTS`` five ``train_on_batch`` steps on the same batches.
``OUT.npz`` gets, per variant, the logs of every step, the adversarial buffer after every
step (the examples the next steps train on), and every weight and BN statistic after
steps 1 and 5.  The random start is fixed: ``pgd.random_start`` is replaced by a
deterministic function of each pixel's place (``fixed_start``), so the backends'
different random streams play no part.  ``--no-tensorflow`` makes importing TensorFlow
fail.

Resume (JAX only; TensorFlow's has its own tests): the ``separate-tau2`` variant also
runs 3 steps, writes a checkpoint (the CLI's
format, ``engine.checkpointing``), restores it into a fresh model and runs steps 4-5:
its weights and buffer go under ``resumed/``.
"""

from __future__ import annotations

import sys

ROWS, STEPS, SIDE = 8, 5, 16

#: name -> ConAdvConfig knobs
VARIANTS = {
    "baseline": {"method": "baseline"},
    "separate-tau2": {"method": "conadv", "staleness": 2, "eps": 8, "step_size": 4},
    "shared": {"method": "conadv", "attack_pass": "shared", "eps": 8},
}


def fixed_start(x, eps, seed, value_range=(0.0, 1.0)):  # noqa: ANN001, ANN201
    """A stand-in for ``pgd.random_start``: ``x + eps sin(1.3 b + 0.7 i + 0.3 j + 0.11 c)``
    at pixel (b, i, j, c), clipped to the range (the seed plays no part)."""
    from keras import ops

    b, i, j, c = (ops.arange(n, dtype="float32") for n in x.shape)
    phase = (
        1.3 * ops.reshape(b, (-1, 1, 1, 1))
        + 0.7 * ops.reshape(i, (1, -1, 1, 1))
        + 0.3 * ops.reshape(j, (1, 1, -1, 1))
        + 0.11 * ops.reshape(c, (1, 1, 1, -1))
    )
    return ops.clip(x + eps * ops.sin(phase), value_range[0], value_range[1])


def model_for(knobs: dict):  # noqa: ANN201
    import numpy as np

    from adv_large_batch.conadv import ConAdv, ConAdvConfig
    from adv_large_batch.engine.losses import smoothed_cross_entropy
    from adv_large_batch.models.image_models import build_image_model
    from adv_large_batch.optimizers import LARS

    config = ConAdvConfig(**knobs)
    network = build_image_model(
        "cifar_resnet8", (SIDE, SIDE, 3), num_classes=10, width=4, split_bn=config.adversarial
    )
    rng = np.random.default_rng(0)
    for variable in network.weights:
        if "moving_variance" in variable.path or "gamma" in variable.path:
            value = 1.0 + 0.1 * rng.random(variable.shape)
        elif len(variable.shape) > 1:
            fan_in = int(np.prod(variable.shape[:-1]))
            value = rng.normal(scale=(2.0 / fan_in) ** 0.5, size=variable.shape)
        else:
            value = 0.05 * rng.normal(size=variable.shape)
        variable.assign(value.astype("float32"))
    model = ConAdv(network, config, micro_batch_size=4, seed=0, batch_size=ROWS)
    model.compile(
        optimizer=LARS(0.5, momentum=0.9, weight_decay=5e-4),
        loss=smoothed_cross_entropy(10, 0.1),
        metrics=["accuracy"],
    )
    return model, network


def batches(staleness: int) -> list[tuple]:
    """The same STEPS training elements on both backends (paired for a buffered run)."""
    import numpy as np

    from adv_large_batch.conadv import IMAGES, NEXT_IMAGES, NEXT_LABELS

    rng = np.random.default_rng(1)
    count = STEPS + max(staleness, 0)
    images = rng.random((count, ROWS, SIDE, SIDE, 3)).astype("float32")
    labels = rng.integers(0, 10, size=(count, ROWS)).astype("int32")
    if staleness == 0:
        return [(images[t], labels[t]) for t in range(STEPS)]
    return [
        (
            {
                IMAGES: images[t],
                NEXT_IMAGES: images[t + staleness],
                NEXT_LABELS: labels[t + staleness],
            },
            labels[t],
        )
        for t in range(STEPS)
    ]


def state_of(model, network, prefix: str) -> dict:  # noqa: ANN001
    import keras

    out = {
        f"{prefix}/weight/{v.path}": keras.ops.convert_to_numpy(v.value) for v in network.weights
    }
    if model.config.buffered:
        out[f"{prefix}/buffer/images"] = keras.ops.convert_to_numpy(model.buffer_images.value)
        out[f"{prefix}/buffer/labels"] = keras.ops.convert_to_numpy(model.buffer_labels.value)
    return out


def run(name: str, results: dict) -> None:
    import numpy as np

    from adv_large_batch.conadv import ConAdvConfig

    knobs = VARIANTS[name]
    model, network = model_for(knobs)
    config = ConAdvConfig(**knobs)
    data = batches(config.staleness if config.buffered else 0)
    for step, (x, y) in enumerate(data):
        logs = model.train_on_batch(x, y, return_dict=True)
        for key, value in logs.items():
            results[f"{name}/{step}/log/{key}"] = np.asarray(value, "float32")
        if step in (0, STEPS - 1):
            results.update(state_of(model, network, f"{name}/{step}"))
        elif config.buffered:
            results.update(
                {
                    k: v
                    for k, v in state_of(model, network, f"{name}/{step}").items()
                    if "/buffer/" in k
                }
            )


def resumed(name: str, directory: str, results: dict) -> None:
    """3 steps, a checkpoint, a fresh model restored from it, steps 4-5."""
    from adv_large_batch.conadv import ConAdvConfig
    from adv_large_batch.engine.checkpointing import (
        latest_checkpoint,
        restore_checkpoint,
        save_checkpoint,
    )

    knobs = VARIANTS[name]
    data = batches(ConAdvConfig(**knobs).staleness)
    model, network = model_for(knobs)
    for x, y in data[:3]:
        model.train_on_batch(x, y)
    save_checkpoint(directory, model, {"global_step": 3})
    model, network = model_for(knobs)
    restore_checkpoint(latest_checkpoint(directory), model)
    for x, y in data[3:]:
        model.train_on_batch(x, y)
    results.update(state_of(model, network, "resumed"))


def main(out: str, directory: str) -> None:
    import keras
    import numpy as np

    from adv_large_batch.conadv import pgd

    pgd.random_start = fixed_start
    results = {"backend": np.array(keras.config.backend())}
    for name in VARIANTS:
        run(name, results)
    if keras.config.backend() == "jax":  # (TensorFlow's resume: tests/conadv/test_conadv_resume.py)
        resumed("separate-tau2", directory, results)
    np.savez(out, **results)


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        import no_tensorflow  # tests/workers/, this script's folder

        no_tensorflow.block()
    main(sys.argv[1], sys.argv[2])
