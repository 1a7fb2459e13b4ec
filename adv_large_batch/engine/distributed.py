"""One interface over single-process, Horovod and ``tf.distribute`` data parallelism.

Both methods of this library are *large-batch* methods: ScaLA and ConAdv reach their global
batch by synchronous data parallelism, every worker computing the gradient of its own slice of
the batch and the workers averaging gradients before each optimizer step. ``get_backend()``
returns a :class:`Backend` that a custom Keras ``train_step`` uses for exactly that:

```python
import keras, numpy as np, tensorflow as tf
from adv_large_batch.engine.distributed import (
    BroadcastCallback, MetricAverageCallback, get_backend)

backend = get_backend()  # "horovod" under horovodrun, else "single"

class Trainer(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((self(x, training=True) - y) ** 2)  # a hand-written term
            scaled = loss * backend.loss_scale()             # 1 / replicas under tf.distribute
        grads = tape.gradient(scaled, self.trainable_variables)
        grads = backend.allreduce_gradients(grads)           # the mean over workers/replicas
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)  # Keras 3 logs self.metrics, not this dict
        return {"loss": self.loss_tracker.result()}

with backend.scope():  # model AND optimizer
    model = Trainer()
    model(np.ones((1, 3), "float32"))  # weights exist before fit: BroadcastCallback sends them
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=backend.jit_compile)
backend.prepare_optimizer(model.optimizer)  # tf.distribute: the gradients come reduced
dataset = tf.data.Dataset.from_tensor_slices(
    (np.ones((16, 3), "float32"), np.zeros((16, 1), "float32"))).batch(8)
model.fit(backend.shard(dataset), callbacks=[BroadcastCallback(), MetricAverageCallback()])
```

The contract (why each rule, with the versions, errors and timings that led to it:
``docs/distributed_notes.md``; tests: ``tests/engine/test_distributed.py``):

* ``allreduce_gradients`` returns the mean over all workers and replicas on every worker and
  replica (Horovod: one ``hvd.grouped_allreduce(op=Average)``; ``tf.distribute``: one SUM of the
  ``1 / replicas``-scaled gradients in replica context), so all take the same decision and P
  workers on B/P rows each train as one process on B rows.
* Under ``tf.distribute`` Keras already scales the losses it computes (``compile(loss=...)``,
  ``add_loss``) by ``1 / num_replicas_in_sync``: only a *hand-written* term takes
  :meth:`Backend.loss_scale`.  :meth:`Backend.prepare_optimizer` stops the Keras optimizer
  from summing the reduced gradients a second time.
* Create the model *and the optimizer* inside ``backend.scope()``; ``StrategyBackend`` mirrors
  over all logical GPUs, else all logical CPU devices.
* XLA is off on every backend (``Backend.jit_compile`` is False, where Keras' ``"auto"`` turns
  it on with a GPU): Horovod's ops have no XLA kernel here, dynamic padding would recompile
  per length and the step timers need ``tf.timestamp``.  Pass ``jit_compile=True`` to
  ``compile`` yourself for static-shape image runs.
* "tpu" (TPUStrategy) is selectable but untested; "multiworker" is refused
  (``MULTIWORKER_REFUSED``): launch multi-node runs with ``horovodrun``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from adv_large_batch import keras_internals
from adv_large_batch.engine.strategies import BACKEND_KINDS, MULTIWORKER_REFUSED
from adv_large_batch.flags import ConfigError
from adv_large_batch.optimizers.gradients import densify

_INSTALL_HINT = (
    "Horovod is not installed in this Python; build it (0.28.1, patched for TF 2.21, with Gloo) "
    "with: PYTHON={python} bash horovodrun_scripts/build_horovod.sh"
)
_HOROVODRUN_ENV = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK")


class HorovodUnavailableError(ImportError):
    """The horovod backend was requested but ``horovod.tensorflow`` cannot be imported."""


def _import_horovod() -> Any:
    try:
        import horovod.tensorflow as hvd
    except ImportError as err:  # also raised by a broken build (missing symbol)
        raise HorovodUnavailableError(
            _INSTALL_HINT.format(python=sys.executable) + f" ({err})"
        ) from err
    return hvd


def horovod_build_info() -> dict[str, Any]:
    """What the installed Horovod was built with; never raises.

    Keys: ``installed``, ``version``, ``gloo``, ``nccl``, ``mpi`` and ``error`` (why it is not
    usable, else None).
    """
    info: dict[str, Any] = {
        "installed": False,
        "version": None,
        "gloo": False,
        "nccl": False,
        "mpi": False,
        "error": None,
    }
    try:
        hvd = _import_horovod()
        import horovod

        info.update(installed=True, version=horovod.__version__)
        info.update(gloo=bool(hvd.gloo_built()), nccl=bool(hvd.nccl_built()))
        info.update(mpi=bool(hvd.mpi_built()))
    except Exception as err:  # noqa: BLE001 -- report, never raise
        cause = err.__cause__ or err
        info["error"] = f"{type(cause).__name__}: {cause}"
    return info


class Backend:
    """Single process: every collective is the identity. Base class of the others."""

    name = "single"
    jit_compile: bool | str = False  # pass to ``model.compile(jit_compile=...)``; see above

    def __init__(self) -> None:
        self.rank = 0
        self.size = 1
        self.local_rank = 0
        self.local_size = 1
        self.num_replicas_in_sync = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def loss_scale(self) -> float:
        """Factor for a hand-written loss term: ``1 / num_replicas_in_sync`` (see module doc)."""
        return 1.0 / self.num_replicas_in_sync

    def allreduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        """Gradients averaged over workers and replicas (inside ``train_step``); identity here.

        Afterwards every worker and replica holds the gradient the optimizer applies.
        """
        return list(grads)

    def prepare_optimizer(self, optimizer: Any) -> None:
        """Adapt a compiled optimizer to gradients this backend already reduced (no-op)."""

    def allreduce_mean(self, value: Any) -> Any:
        """``value`` averaged over workers (metrics); identity here."""
        return value

    def broadcast_variables(self, variables: Sequence[Any], root_rank: int = 0) -> None:
        """Overwrite ``variables`` with their values on ``root_rank`` (eager); no-op here."""

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Where to build the model and optimizer."""
        return contextlib.nullcontext()

    def shard(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """This worker's part of ``dataset`` (element ``i`` goes to rank ``i % size``)."""
        return dataset

    def barrier(self) -> None:
        """Wait for all workers."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, rank={self.rank}, size={self.size}, "
            f"num_replicas_in_sync={self.num_replicas_in_sync})"
        )


#: Horovod's own knobs for a rank that stops answering without dying (a frozen host, a
#: hung filesystem): the coordinator names the ranks a collective waits for after
#: ``HOROVOD_STALL_CHECK_TIME_SECONDS`` and shuts the job down after
#: ``HOROVOD_STALL_SHUTDOWN_TIME_SECONDS`` (Horovod's default: never).  Set here unless the
#: launcher's environment sets them; the shutdown time must exceed the longest work one
#: rank does alone (the chief's checkpoint write).  A rank that dies (``kill -9``, the OOM
#: killer) needs none of them: its peers' sockets are reset, and ``horovodrun`` stops the
#: other ranks (SIGTERM, then SIGKILL after HOROVOD_GRACEFUL_TERMINATION_TIME_S with the runner
#: patch of build_horovod.sh, 5 s without) as soon as one exits non-zero.
HOROVOD_FAULT_DEFAULTS = {
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "60",
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "600",
}


class HorovodBackend(Backend):
    """One process per worker launched by ``horovodrun``; collectives over Gloo (or NCCL)."""

    name = "horovod"

    def __init__(self) -> None:
        super().__init__()
        self.hvd = hvd = _import_horovod()
        for key, value in HOROVOD_FAULT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        hvd.init()
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()

    def allreduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        """One ``hvd.grouped_allreduce(op=Average)``; None stays None, IndexedSlices go dense."""
        grads = list(grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return grads
        dense = [densify(grads[i]) for i in present]
        reduced = self.hvd.grouped_allreduce(dense, op=self.hvd.Average)
        for i, g in zip(present, reduced):
            grads[i] = g
        return grads

    def allreduce_mean(self, value: Any) -> Any:
        return self.hvd.allreduce(tf.convert_to_tensor(value), op=self.hvd.Average)

    def broadcast_variables(self, variables: Sequence[Any], root_rank: int = 0) -> None:
        # hvd.broadcast_variables fails on Keras 3 variables (docs/distributed_notes.md).
        for i, v in enumerate(variables):
            v.assign(self.hvd.broadcast(v.value, root_rank, name=f"alb_broadcast_{i}"))

    def shard(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        return dataset.shard(self.size, self.rank)

    def barrier(self) -> None:
        # Horovod 0.28.1 has no hvd.barrier() for TensorFlow: an allreduce waits for every rank.
        self.hvd.allreduce(tf.constant(0.0), name="alb_barrier")


class StrategyBackend(Backend):
    """A ``tf.distribute`` strategy; Keras splits each global batch over the replicas."""

    def __init__(self, name: str, strategy: tf.distribute.Strategy) -> None:
        super().__init__()
        self.name = name
        self.strategy = strategy
        self.num_replicas_in_sync = strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def allreduce_gradients(self, grads: Sequence[Any]) -> list[Any]:
        """One all-reduce (SUM of the 1/replicas-scaled replica gradients = their mean) in
        replica context, so every replica holds the applied gradient: its norm and
        finiteness are then the same everywhere (``prepare_optimizer`` stops the Keras
        optimizer from summing it a second time)."""
        context = tf.distribute.get_replica_context()
        grads = list(grads)
        if context is None or self.num_replicas_in_sync == 1:
            return grads
        present = [i for i, g in enumerate(grads) if g is not None]
        reduced = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [densify(grads[i]) for i in present]
        )
        for i, g in zip(present, reduced):
            grads[i] = g
        return grads

    def prepare_optimizer(self, optimizer: Any) -> None:
        """The Keras 3 TF optimizer all-reduces (sums) replica gradients inside ``apply``;
        the trainer hands it gradients already reduced by ``allreduce_gradients``, so that
        step becomes the identity, on the optimizer and on the inner optimizer of a
        ``LossScaleOptimizer`` (``keras_internals.disable_gradient_all_reduce``)."""
        for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
            if opt is not None:
                keras_internals.disable_gradient_all_reduce(opt)

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return self.strategy.scope()


def _mirrored_devices() -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def _make_backend(kind: str) -> Backend:
    if kind == "single":
        return Backend()
    if kind == "horovod":
        return HorovodBackend()
    if kind == "mirrored":
        return StrategyBackend(kind, tf.distribute.MirroredStrategy(devices=_mirrored_devices()))
    if kind == "tpu":  # untested here
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return StrategyBackend(kind, tf.distribute.TPUStrategy(resolver))
    if kind == "multiworker":
        raise ConfigError(MULTIWORKER_REFUSED)
    raise AssertionError(kind)


_BACKENDS: dict[str, Backend] = {}


def get_backend(kind: str = "auto") -> Backend:
    """The process's backend of ``kind`` (created once, then cached).

    ``kind`` is one of ``BACKEND_KINDS``; "auto" is "horovod" when launched by horovodrun
    (``HOROVOD_RANK`` or ``OMPI_COMM_WORLD_RANK`` set), else "single".
    """
    if kind not in BACKEND_KINDS:
        raise ValueError(
            f"unknown distributed backend {kind!r}; allowed: {', '.join(BACKEND_KINDS)}"
        )
    if kind == "auto":
        kind = "horovod" if any(v in os.environ for v in _HOROVODRUN_ENV) else "single"
    if kind not in _BACKENDS:
        _BACKENDS[kind] = _make_backend(kind)
    return _BACKENDS[kind]


class BroadcastCallback(keras.callbacks.Callback):
    """At the start of ``fit``, copy model and optimizer variables from ``root_rank``.

    Needed so that every Horovod worker starts from the same weights (and, when resuming, the
    same optimizer slots and iteration count). Builds the optimizer first if needed, so its
    variables exist.
    """

    def __init__(self, backend: Backend | None = None, root_rank: int = 0) -> None:
        super().__init__()
        self.backend = backend
        self.root_rank = root_rank

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        backend = self.backend or get_backend()
        if not self.model.variables:
            raise RuntimeError(
                "BroadcastCallback: the model has no variables when training begins, so there is "
                "nothing to broadcast and each worker would keep its own initial weights; build "
                "it first, e.g. by calling it on one batch."
            )
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = broadcast_set(self.model)
        backend.broadcast_variables(variables, root_rank=self.root_rank)


def broadcast_set(model: keras.Model) -> list[Any]:
    """Model and optimizer variables that rank 0 broadcasts: all but the model's
    ``per_worker_variables()`` (e.g. ConAdv's buffer of this worker's own adversarial
    batches), which every worker keeps."""
    own = getattr(model, "per_worker_variables", lambda: [])()
    excluded = {id(v) for v in own}
    variables = list(model.variables) + list(model.optimizer.variables)
    return [v for v in variables if id(v) not in excluded]


class MetricAverageCallback(keras.callbacks.Callback):
    """At each epoch end, replace every numeric log value by its average over workers.

    Must come before callbacks that read the logs (checkpointing, early stopping, loggers).
    """

    def __init__(self, backend: Backend | None = None) -> None:
        super().__init__()
        self.backend = backend

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not logs:
            return
        backend = self.backend or get_backend()
        for key in sorted(logs):  # same order on every rank
            value = logs[key]
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric or getattr(value, "ndim", None) == 0:
                mean = backend.allreduce_mean(tf.constant(float(value), tf.float64))
                logs[key] = float(mean)
