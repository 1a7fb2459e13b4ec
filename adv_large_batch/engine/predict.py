"""A network's outputs for every example of an evaluation set, on any backend and any
number of devices and processes.

Keras' ``predict`` returns one output row per input row on one device, and under
TensorFlow (each Horovod worker evaluates the whole set).  Under a JAX
``keras.distribution`` it cannot serve: the batch must divide over the job's devices,
and the outputs of a job of several processes are spread over them (NumPy cannot read
them).  ``predict_rows`` takes the evaluation batches of ``text_pipeline.make_eval_batches``
(``(x, y)``, or ``(x, y, w)`` split over the processes with weight-0 padding rows), runs
the network's inference call over the global batch with the weights as they are laid
out, has XLA gather the outputs onto every device, and drops the padding rows: every
process gets the same outputs, in the order of the examples, equal to one device's.

```python
import numpy as np
from adv_large_batch.data.text_pipeline import make_eval_batches
from adv_large_batch.engine.predict import predict_rows
from adv_large_batch.models.text_classifiers import build_network

network, _ = build_network("tiny-random", num_classes=2, seed=0)
x = {"token_ids": np.ones((5, 8), "int32"), "segment_ids": np.zeros((5, 8), "int32"),
     "padding_mask": np.ones((5, 8), "int32")}
outputs = predict_rows(network, make_eval_batches(x, np.zeros(5, "int32"), batch_size=2))
assert outputs.shape == (5, 2)
```
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def predict_rows(network: keras.Model, batches: Any) -> np.ndarray:
    """``network``'s inference outputs (``training=False``), one row per real example of
    ``batches`` in order, as one NumPy array on every process.  ``batches`` yields
    ``(x, y)`` or ``(x, y, w)``; rows of weight 0 are padding and are dropped."""
    distribution = _distribution()
    if distribution is None:
        return _predict_local(network, batches)
    return _predict_distributed(network, batches, distribution)


def _distribution() -> Any:
    """The JAX backend's active ``keras.distribution`` (None elsewhere)."""
    if keras.config.backend() != "jax":
        return None
    return keras.distribution.distribution()


def _predict_local(network: keras.Model, batches: Any) -> np.ndarray:
    """One device (or TensorFlow, a worker evaluating the whole set): Keras' ``predict``
    (its batches carry no padding rows)."""
    return network.predict(batches, verbose=0)


def _predict_distributed(network: keras.Model, batches: Any, distribution: Any) -> np.ndarray:
    """``predict_rows`` under a JAX distribution: one jitted inference call per batch
    shape over the global batch (each process feeds its rows), outputs replicated."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = distribution.device_mesh.backend_mesh
    rows = NamedSharding(mesh, PartitionSpec(distribution.batch_dim_name))
    everywhere = NamedSharding(mesh, PartitionSpec())

    def infer(trainable: list, non_trainable: list, x: Any, w: Any) -> tuple[Any, Any]:
        y, _ = network.stateless_call(trainable, non_trainable, x, training=False)
        return y, w

    infer = jax.jit(infer, out_shardings=(everywhere, everywhere))
    trainable = [v.value for v in network.trainable_variables]
    non_trainable = [v.value for v in network.non_trainable_variables]

    def global_batch(local: Any) -> Any:
        return jax.make_array_from_process_local_data(rows, np.asarray(local))

    outputs = []
    for batch in batches:
        x, _, w = keras.utils.unpack_x_y_sample_weight(batch)
        if not network.built:  # a symbolic call builds it (its weights exist already)
            network(keras.tree.map_structure(_symbolic, x), training=False)
        if w is None:
            w = np.ones(len(next(iter(jax.tree_util.tree_leaves(x)))), np.float32)
        y, w = infer(trainable, non_trainable, jax.tree_util.tree_map(global_batch, x),
                     global_batch(w))  # fmt: skip
        outputs.append(np.asarray(y)[np.asarray(w) > 0])
    return np.concatenate(outputs)


def _symbolic(array: Any) -> keras.KerasTensor:
    """A symbolic tensor of ``array``'s shape and dtype (no computation)."""
    array = np.asarray(array)
    return keras.KerasTensor(array.shape, str(array.dtype))


__all__ = ["predict_rows"]
