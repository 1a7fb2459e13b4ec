"""ScaLA's train step on whichever Keras backend ``KERAS_BACKEND`` names:
``python tests/workers/scala_steps.py OUT.npz [--no-tensorflow] [--variants a b ...]``.

For ``tests/scala/test_scala_backends.py``: the tiny random BERT classifier with dropout
off and weights from NumPy (seed 0: the same on both backends), five batches of 8
sentences of different lengths (micro-batches of 4, sorted by length), and for each
variant of ``VARIANTS`` five ``train_on_batch`` steps.  ``OUT.npz`` gets, per variant,
the logs of every step and the weights after steps 1 and 5.  The random start is fixed:
``perturbation.random_start`` is replaced by a deterministic function of each entry's
(row, token, unit) in the eps ball (``fixed_start``), so the two backends' different
random streams play no part (and a probs-target ascent does not start at its minimum).
``--no-tensorflow`` makes importing TensorFlow fail.

Checkpoints across the backends: ``--checkpoint-to DIR`` writes the baseline run's
step-5 checkpoint (``engine.checkpointing``, the CLI's format) under ``DIR``;
``--restore-from DIR`` loads the newest checkpoint in ``DIR`` into a fresh baseline model
and adds its weights and optimizer step under ``restored/``; ``--variants`` with nothing
after it trains nothing (a restore-only run).
"""

from __future__ import annotations

import sys

SENTENCES = [
    "a gripping, beautifully acted film",
    "a dull, lifeless mess",
    "fine.",
    "so-so, with a few good scenes and a lot of bad ones",
    "the best film of the year",
    "not worth it",
    "two hours of my life i will never get back",
    "wow",
]

#: name -> (ScaLAConfig knobs, optimizer, classes)
VARIANTS = {
    "baseline/lamb": ({"method": "baseline"}, "lamb", 2),
    # probs target, l-inf step, t_s = step 2 (the first two steps run without)
    "scala-late/adamw": ({"start_step": 2, "eps": 1e-1, "step_size": 1e-1}, "adamw", 2),
    # ground-truth target, PGA-2, the paper's raw gradient step
    "scala-labels-k2-raw/lamb": (
        {"adv_target": "labels", "steps": 2, "step_norm": "none", "eps": 1e-2, "step_size": 1e-1},
        "lamb",
        2,
    ),
    "scala-relative/lamb": ({"radius": "relative", "eps": 0.1, "step_size": 0.1}, "lamb", 2),
    "regression/lamb": ({"eps": 1e-2, "step_size": 1e-2}, "lamb", 1),
}


def fixed_start(shape, eps, kind="uniform", scale=None, seed=None):  # noqa: ANN001, ANN201
    """A stand-in for ``random_start``: ``eps * sin(1.3 b + 0.7 t + 0.11 h)`` at entry
    (b, t, h), whatever the sequence length (TensorFlow trims it, JAX pads it)."""
    from keras import ops

    b = ops.reshape(ops.arange(shape[0], dtype="float32"), (-1, 1, 1))
    t = ops.reshape(ops.arange(shape[1], dtype="float32"), (1, -1, 1))
    h = ops.reshape(ops.arange(shape[2], dtype="float32"), (1, 1, -1))
    return ops.sin(1.3 * b + 0.7 * t + 0.11 * h) * ops.cast(eps, "float32")


def model_for(knobs: dict, optimizer: str, classes: int):  # noqa: ANN201
    import keras
    import numpy as np

    from adv_large_batch.models.text_classifiers import build_network
    from adv_large_batch.optimizers import OptimizerConfig, build_optimizer
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    network, _ = build_network("tiny-random", num_classes=classes, seed=0, sequence_length=16)
    for layer in network._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    rng = np.random.default_rng(0)
    for variable in network.trainable_weights:  # large enough that r is far above rounding
        scale = (1.0 if "logits" in variable.path else 0.2) if len(variable.shape) > 1 else 0.01
        value = rng.normal(scale=scale, size=variable.shape) + ("gamma" in variable.path)
        variable.assign(value.astype("float32"))
    config = ScaLAConfig(**knobs)
    model = ScaLA(network, config, micro_batch_size=4, seed=0, steps_per_epoch=5)
    lr = 1e-2 if optimizer == "lamb" else 1e-3
    built = build_optimizer(
        OptimizerConfig(optimizer=optimizer, lr=lr, weight_decay=0.01, warmup_ratio=0.2),
        total_steps=5,
        global_batch_size=8,
    )
    if classes == 1:
        loss = keras.losses.MeanSquaredError()
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=built, loss=loss)
    return model, network


def restored(directory: str) -> dict:
    """The baseline model with the newest checkpoint of ``directory`` loaded into it."""
    import keras

    from adv_large_batch.engine.checkpointing import latest_checkpoint, restore_checkpoint

    model, network = model_for(*VARIANTS["baseline/lamb"])
    restore_checkpoint(latest_checkpoint(directory), model)
    out = {f"restored/weight/{v.path}": keras.ops.convert_to_numpy(v.value)
           for v in network.trainable_weights}  # fmt: skip
    out["restored/iterations"] = int(model.optimizer.iterations.numpy())
    out["restored/batches_seen"] = int(model.batches_seen.numpy())
    return out


def main(out: str, variants: list[str], save_to: str | None, restore_from: str | None) -> None:
    import keras
    import numpy as np

    from adv_large_batch.engine.checkpointing import save_checkpoint
    from adv_large_batch.scala import perturbation

    perturbation.random_start = fixed_start
    results = {"backend": np.array(keras.config.backend())}
    rng = np.random.default_rng(1)
    for name in variants:
        knobs, optimizer, classes = VARIANTS[name]
        model, network = model_for(knobs, optimizer, classes)
        x = network.preprocessor.encode(SENTENCES)
        for step in range(5):
            order = rng.permutation(len(SENTENCES))
            batch = {k: v[order] for k, v in x.items()}
            if classes == 1:
                y = rng.uniform(0, 5, size=(8, 1)).astype("float32")
            else:
                y = rng.integers(0, 2, size=8)
            logs = model.train_on_batch(batch, y, return_dict=True)
            for key, value in logs.items():
                results[f"{name}/{step}/log/{key}"] = np.asarray(value, "float32")
            if step in (0, 4):
                for v in network.trainable_weights:
                    results[f"{name}/{step}/weight/{v.path}"] = keras.ops.convert_to_numpy(v.value)
        if save_to and name == "baseline/lamb":
            save_checkpoint(save_to, model, {"global_step": int(model.batches_seen.numpy())})
    if restore_from:
        results.update(restored(restore_from))
    np.savez(out, **results)


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        import no_tensorflow  # tests/workers/, this script's folder

        no_tensorflow.block()

    def value(flag: str) -> str | None:
        return sys.argv[sys.argv.index(flag) + 1] if flag in sys.argv else None

    chosen = list(VARIANTS)
    if "--variants" in sys.argv:
        chosen = [v for v in sys.argv[sys.argv.index("--variants") + 1 :] if v in VARIANTS]
    main(sys.argv[1], chosen, value("--checkpoint-to"), value("--restore-from"))
