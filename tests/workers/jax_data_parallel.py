"""ScaLA on the JAX backend over several devices or processes, against one device:
``python tests/workers/jax_data_parallel.py MODE OUT.npz`` with TensorFlow blocked.

* ``single``: one device (no distribution).  The default configuration (LAMB, probs
  target, uniform random start, dropout on) on a global batch of 16 in micro-batches of
  4, three steps.  Also on one device: the run saved after two steps and loaded with
  ``keras.models.load_model`` (a new trainer object) takes the third step exactly as the
  uninterrupted run did (dropout masks included); a step with a NaN loss changes no
  weight and no optimizer state; a batch of 10 in micro-batches of 4 (4 + 4 + 2 rows)
  gives the gradient of the whole batch (accumulation invariance, the short last
  micro-batch weighted by its rows).
* ``devices``: the same run under ``DataParallel`` over the process's devices (the test
  sets ``XLA_FLAGS=--xla_force_host_platform_device_count=2``), plus the number of
  all-reduce ops in the compiled step with 4 micro-batches per device, and of those
  inside a loop's body.
* ``process``: one of two processes of a job on localhost (``KERAS_DISTRIBUTION_*`` set
  by the test), each feeding its 8 rows of the global batch; rank 0 writes ``OUT``.

Every batch is sorted by length over the whole global batch, so sorting per device (as
the trainer does) and over the batch (one device) give the same micro-batches.
"""

from __future__ import annotations

import sys

SENTENCES = [
    "wow",
    "fine.",
    "not worth it",
    "a dull, lifeless mess",
    "the best film of the year",
    "a gripping, beautifully acted film",
    "two hours of my life i will never get back",
    "so-so, with a few good scenes and a lot of bad ones",
] * 2


def make(micro: int | None, dropout: bool, knobs: dict):  # noqa: ANN201
    import keras
    import numpy as np

    from adv_large_batch.models.text_classifiers import build_network
    from adv_large_batch.optimizers import LAMB
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    network, _ = build_network("tiny-random", num_classes=2, seed=0, sequence_length=16)
    if not dropout:
        for layer in network._flatten_layers():
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
    rng = np.random.default_rng(0)
    for variable in network.trainable_weights:
        variable.assign(rng.normal(scale=0.05, size=variable.shape).astype("float32"))
    model = ScaLA(network, ScaLAConfig(**knobs), micro_batch_size=micro, seed=0)
    model.compile(optimizer=LAMB(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))  # fmt: skip
    return model, network


def batches(rows: slice = slice(None)):  # noqa: ANN201
    """Three global batches of 16 sorted by length (all rows, or this process's)."""
    import numpy as np

    from adv_large_batch.models.text_classifiers import build_network

    network, _ = build_network("tiny-random", num_classes=2, seed=0, sequence_length=16)
    x = network.preprocessor.encode(SENTENCES)
    order = np.argsort(x["padding_mask"].sum(axis=1), kind="stable")
    x = {k: v[order] for k, v in x.items()}
    labels = np.random.default_rng(1).integers(0, 2, size=(3, len(SENTENCES)))
    return [({k: v[rows] for k, v in x.items()}, y[rows]) for y in labels]


def train(model, network, data) -> dict:  # noqa: ANN001
    import keras

    logs = [model.train_on_batch(x, y, return_dict=True) for x, y in data]
    out = {f"weight/{v.path}": keras.ops.convert_to_numpy(v.value) for v in network.weights}
    out["regulariser"] = [float(log["regulariser"]) for log in logs]
    out["loss"] = [float(log["loss"]) for log in logs]
    return out


def resumed(tmp: str) -> dict:
    """The default run, saved after two steps and resumed from the file for the third."""
    import keras

    model, _ = make(4, True, {})
    data = batches()
    for x, y in data[:2]:
        model.train_on_batch(x, y)
    model.save(f"{tmp}/two_steps.keras")
    model = keras.models.load_model(f"{tmp}/two_steps.keras")
    return train(model, model.network, data[2:])


def skipped_and_uneven() -> dict:
    """A NaN step leaves the state alone; 4 + 4 + 2 rows accumulate to the whole batch."""
    import keras
    import numpy as np

    from adv_large_batch.engine.jax_trainer import JaxAccumulatingTrainer

    def dense(micro):  # noqa: ANN001, ANN202
        net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        net.set_weights([np.full((3, 2), 0.5, "float32"), np.zeros(2, "float32")])
        model = JaxAccumulatingTrainer(net, micro_batch_size=micro, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")  # update = gradient
        return model

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 3)).astype("float32"), rng.normal(size=(10, 2)).astype("float32")
    out = {}
    for micro in (None, 4):
        model = dense(micro)
        model.train_on_batch(x, y)
        out[f"uneven/{micro}"] = np.concatenate([w.ravel() for w in model.network.get_weights()])
    bad = x.copy()
    bad[3, 0] = np.nan
    logs = model.train_on_batch(bad, y, return_dict=True)
    out["nan/weights"] = np.concatenate([w.ravel() for w in model.network.get_weights()])
    out["nan/iterations"] = np.array(int(model.optimizer.iterations.numpy()))
    out["nan/batches_seen"] = np.array(int(model.batches_seen.numpy()))
    out["nan/nonfinite_steps"] = np.array(float(logs["nonfinite_steps"]))
    return out


def all_reduces(micro: int) -> tuple[int, int]:
    """(all-reduce ops in the compiled ScaLA step, those inside a loop's body) with
    ``micro`` rows per micro-batch."""
    import jax

    model, _ = make(micro, True, {})
    x, y = batches()[0]
    model.train_on_batch(x, y)  # builds the state
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    text = jax.jit(model.train_step).lower(state, (x, y)).compile().as_text()
    bodies = {part.split(",")[0].split(" ")[0].strip("%") for part in text.split("body=")[1:]}
    where, total, in_loops = None, 0, 0
    for line in text.splitlines():
        if line.endswith("{") and not line.startswith(" "):
            where = line.split(" ")[0].strip("%")  # a computation begins
        elif " all-reduce(" in line or " all-reduce-start(" in line:
            total += 1
            in_loops += where in bodies
    return total, in_loops


def main(mode: str, out: str) -> None:
    import jax
    import numpy as np

    from adv_large_batch.engine.jax_distribution import get_jax_backend

    backend = get_jax_backend()
    results = {"devices": np.array(jax.device_count()), "processes": np.array(backend.size)}
    rows = slice(None)
    if mode == "process":
        half = len(SENTENCES) // backend.size
        rows = slice(backend.rank * half, (backend.rank + 1) * half)
    for key, value in train(*make(4, True, {}), batches(rows)).items():
        results[f"default/{key}"] = np.asarray(value)
    if mode == "single":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for key, value in resumed(tmp).items():
                results[f"resumed/{key}"] = np.asarray(value)
        results.update(skipped_and_uneven())
    if mode == "devices":
        results["all_reduces"] = np.array(all_reduces(2))  # 4 micro-batches per device
    if backend.rank == 0:
        np.savez(out, **results)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import no_tensorflow  # tests/workers/, this script's folder

    no_tensorflow.block()
    main(sys.argv[1], sys.argv[2])
