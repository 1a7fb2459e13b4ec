"""ConAdv on the JAX backend over several devices or processes, against one device:
``python tests/workers/conadv_data_parallel.py MODE OUT.npz`` with TensorFlow blocked.

For ``tests/conadv/test_conadv_data_parallel.py``.  Each schedule of ``SCHEDULES``
(DisAdv, ConAdv separate with tau = 2, ConAdv shared) trains the dropout-free CIFAR
ResNet-8 with split BN of ``conadv_steps.model_for`` (weights from NumPy, LARS, label
smoothing, micro-batches of 4) for ``STEPS`` ``train_on_batch`` steps on global batches
of ``GLOBAL_ROWS`` images.  The random start is ``conadv_steps.fixed_start``, a function
of each pixel's place in its micro-batch: the same on any number of devices as long as
the micro-batches hold the same rows, and they do - device d takes rows ``8d .. 8d + 7``
of the global batch, its two micro-batches are the global micro-batches ``2d``, ``2d + 1``
(the one device's third and fourth for d = 1).

* ``single``: one device, ``batch_size=16`` (the trainer's batch is per device).
* ``devices``: ``DataParallel`` over the process's two devices (the test sets
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``), ``batch_size=8``; XLA dumps
  the train steps Keras compiles, and ``OUT`` gets the all-reduce ops of each (``hlo``).
* ``process``: one of two processes of a job on localhost (``KERAS_DISTRIBUTION_*`` set by
  the test), each feeding its 8 rows of the global batch, ``batch_size=8``; rank ``r``
  writes ``OUT`` with ``.rank{r}`` before the suffix.  Only the buffered schedules
  (``PROCESS_SCHEDULES``): DisAdv's step is the separate schedule's first tau steps (the
  same attack at the current weights), and each schedule costs two XLA compiles here.

``OUT`` gets, per schedule, the logs of every step, the buffer after every step gathered
to the global array (``process_allgather`` across processes), every trainable weight
after the last step, and where the buffer lives: the rows each device of the job holds,
the rows (and values) this process holds itself.  The BN moving statistics are not saved:
under data parallelism they are the mean of the devices' own, not one device's.
"""

from __future__ import annotations

import sys

STEPS, GLOBAL_ROWS = 3, 16
SCHEDULES = ("disadv", "separate-tau2", "shared")
PROCESS_SCHEDULES = ("separate-tau2", "shared")


#: The schedules ``conadv_steps.VARIANTS`` lacks (it compares backends, where DisAdv is
#: the separate schedule's first tau steps).
EXTRA_VARIANTS = {"disadv": {"method": "disadv", "eps": 8}}


def model_and_batches(name: str, per_device: int) -> tuple:
    """``conadv_steps.model_for`` with ``batch_size=per_device``, and ``STEPS`` global
    batches of ``GLOBAL_ROWS`` rows (paired for a buffered schedule).  ``conadv_steps``
    reads its ``ROWS`` and ``STEPS`` when called, so they are set for the call.  The
    random initializers return zeros meanwhile: ``model_for`` assigns every weight, and
    their XLA programs would cost ~12 s a process."""
    from unittest import mock

    import conadv_steps as steps  # tests/workers/, this script's folder
    import keras

    from adv_large_batch.conadv import ConAdvConfig

    knobs = {**steps.VARIANTS, **EXTRA_VARIANTS}[name]
    config = ConAdvConfig(**knobs)
    steps.ROWS, steps.STEPS = GLOBAL_ROWS, STEPS
    data = steps.batches(config.staleness if config.buffered else 0)
    steps.ROWS = per_device

    def zeros(self, shape, dtype=None):  # noqa: ANN001, ANN202
        return keras.ops.zeros(shape, dtype)

    with mock.patch.object(keras.initializers.VarianceScaling, "__call__", zeros):
        model, network = steps.model_for(knobs)
    return model, network, data


def rows_of(batch: tuple, rows: slice) -> tuple:
    """This process's rows of a global batch (images or a paired element, labels)."""
    x, y = batch
    x = {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else x[rows]
    return x, y[rows]


def gathered(value):  # noqa: ANN001, ANN201
    """The global array as NumPy, from every process when it spans several."""
    import numpy as np

    if value.is_fully_addressable:
        return np.asarray(value)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def buffer_layout(value, prefix: str) -> dict:  # noqa: ANN001
    """Where the buffer ``value`` lives: its partition spec, the ``[start, stop)`` rows
    (axis 1) of every device of the job in device-id order, and this process's shards
    (their rows and values)."""
    import numpy as np

    def rows(index: tuple) -> tuple[int, int]:
        return index[1].indices(value.shape[1])[:2]

    indices = value.sharding.devices_indices_map(value.shape)
    local = sorted(value.addressable_shards, key=lambda s: s.device.id)
    return {
        f"{prefix}/spec": np.array(str(getattr(value.sharding, "spec", None))),
        f"{prefix}/rows": np.array([rows(indices[d]) for d in sorted(indices, key=lambda d: d.id)]),
        f"{prefix}/local_rows": np.array([rows(s.index) for s in local]),
        f"{prefix}/local_values": np.stack([np.asarray(s.data) for s in local]),
    }


def train(name: str, rows: slice, per_device: int) -> tuple[dict, object]:
    """``STEPS`` steps of schedule ``name`` on this process's ``rows``: what ``OUT`` gets
    under ``name/``, and the model."""
    import keras
    import numpy as np

    model, network, data = model_and_batches(name, per_device)
    out = {}
    for step, batch in enumerate(data):
        logs = model.train_on_batch(*rows_of(batch, rows), return_dict=True)
        for key, value in logs.items():
            out[f"{name}/{step}/log/{key}"] = np.asarray(value, "float32")
        if model.config.buffered:
            out[f"{name}/{step}/buffer/images"] = gathered(model.buffer_images.value)
            out[f"{name}/{step}/buffer/labels"] = gathered(model.buffer_labels.value)
    for v in network.trainable_weights:
        out[f"{name}/weight/{v.path}"] = keras.ops.convert_to_numpy(v.value)
    if model.config.buffered:
        out.update(buffer_layout(model.buffer_images.value, f"{name}/layout"))
    return out, model


def all_reduces(text: str) -> tuple[list[str], int]:
    """The all-reduce ops of an optimized HLO module: each one's result shapes (one
    string, ``;``-separated; a combined all-reduce has several), and how many sit in a
    loop's body."""
    bodies = {part.split(",")[0].split(" ")[0].strip("%") for part in text.split("body=")[1:]}
    where, shapes, in_loops = None, [], 0
    for line in text.splitlines():
        if line.endswith("{") and not line.startswith(" "):
            where = line.split(" ")[0].strip("%")  # a computation begins
        elif " all-reduce(" in line or " all-reduce-start(" in line:
            # "%all-reduce.11 = (f32[16,10]{1,0}, /*index=1*/f32[16]{0}) all-reduce(..."
            result = line.split("=", 1)[1].split(" all-reduce")[0].strip().strip("()")
            parts = [p.split("*/")[-1].split("{")[0].strip() for p in result.split(", ")]
            shapes.append(";".join(parts))
            in_loops += where in bodies
    return shapes, in_loops


def hlo(name: str, model, dump: str, seen: set) -> dict:  # noqa: ANN001
    """The all-reduces of schedule ``name``'s train step as Keras compiled it (the dump
    XLA wrote since ``seen``), and the shapes of the gradients and BN moving statistics
    (``main`` and ``aux``) a step may reduce."""
    import glob

    import numpy as np

    files = set(glob.glob(f"{dump}/*jit_train_step*after_optimizations.txt")) - seen
    assert len(files) == 1, f"{name}: one compiled train step expected, got {sorted(files)}"
    seen.update(files)
    with open(files.pop()) as handle:
        shapes, in_loops = all_reduces(handle.read())

    def shape(v) -> str:  # noqa: ANN001
        return f"{v.dtype}[{','.join(map(str, v.shape))}]".replace("float32", "f32")

    moving = [model.non_trainable_variables[p] for p in model.moving_positions()]
    return {
        f"{name}/hlo/all_reduces": np.array(shapes),
        f"{name}/hlo/in_loops": np.array(in_loops),
        f"{name}/hlo/gradients": np.array([shape(v) for v in model.trainable_variables]),
        f"{name}/hlo/moving": np.array([shape(v) for v in moving]),
    }


def main(mode: str, out: str) -> None:
    import os
    import shutil
    import tempfile

    dump = tempfile.mkdtemp(prefix="conadv_hlo_") if mode == "devices" else None
    if dump:  # before JAX starts its backend: XLA writes every train step it compiles
        flags = f"--xla_dump_to={dump} --xla_dump_hlo_module_re=jit_train_step"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}"
    import conadv_steps  # tests/workers/, this script's folder
    import jax
    import numpy as np

    from adv_large_batch.conadv import pgd
    from adv_large_batch.engine.jax_distribution import get_jax_backend

    pgd.random_start = conadv_steps.fixed_start
    backend = get_jax_backend()
    rows = slice(None)
    if mode == "process":
        share = GLOBAL_ROWS // backend.size
        rows = slice(backend.rank * share, (backend.rank + 1) * share)
        out = out.replace(".npz", f".rank{backend.rank}.npz")
    results = {"devices": np.array(jax.device_count()), "processes": np.array(backend.size)}
    seen: set[str] = set()
    for name in PROCESS_SCHEDULES if mode == "process" else SCHEDULES:
        trained, model = train(name, rows, GLOBAL_ROWS // jax.device_count())
        results.update(trained)
        if dump:
            results.update(hlo(name, model, dump, seen))
    if dump:
        shutil.rmtree(dump, ignore_errors=True)
    np.savez(out, **results)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import no_tensorflow  # tests/workers/, this script's folder

    no_tensorflow.block()
    main(sys.argv[1], sys.argv[2])
