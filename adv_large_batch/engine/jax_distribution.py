"""Data parallelism on the JAX backend: ``keras.distribution.DataParallel`` over every
device of every process (the JAX counterpart of ``engine/distributed.py``).

One process per host (or per GPU) sees its local devices; several processes join one job
through ``keras.distribution.initialize`` (``jax.distributed``), which reads
``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator's ``host:port`` first),
``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID`` from the
environment.  Every process then feeds its own slice of the global batch (rank ``r`` of
``size`` takes every ``size``-th example, as under Horovod) and Keras places it on the
local devices; the trainer (``engine/jax_trainer.py``) accumulates each device's
micro-batches and reduces the gradients once per optimizer step.

Example (2 virtual CPU devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=2``):

```python
import keras
from adv_large_batch.engine.jax_distribution import get_jax_backend

if keras.config.backend() == "jax":
    backend = get_jax_backend()  # DataParallel over jax.devices() when there are several
    print(backend)               # JaxBackend(processes=1, devices=2, rank=0, local_devices=2)
```
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import keras

#: The environment of a multi-process JAX job (``keras.distribution.initialize``).
JOB_ENV = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)

#: What each TensorFlow-only ``--strategy`` is called on JAX.
JAX_ALTERNATIVE = (
    "on the JAX backend use --strategy auto: keras.distribution.DataParallel over every local "
    "device, and several processes (hosts) join through keras.distribution.initialize with "
    f"{', '.join(JOB_ENV)} set (README, 'Keras backends')"
)


def in_multi_process_job() -> bool:
    """True when the launcher set the multi-process environment (``JOB_ENV``)."""
    return (
        all(os.environ.get(name) for name in JOB_ENV[1:])
        and int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "1")) > 1
    )


class JaxBackend:
    """The data-parallel backend of a JAX process (the interface of ``distributed.Backend``).

    ``size`` is the number of processes and ``rank`` this one's index (the data is split
    by process); ``num_replicas_in_sync`` the devices of this process; ``devices`` all
    devices of the job.  ``distribution`` is Keras' ``DataParallel`` (None on one device).
    """

    name = "jax"
    jit_compile: bool | str = True

    def __init__(self, distribution: Any = None) -> None:
        import jax

        self.distribution = distribution
        self.rank = jax.process_index()
        self.size = jax.process_count()
        self.local_rank, self.local_size = 0, 1
        self.devices = jax.device_count()
        self.num_replicas_in_sync = jax.local_device_count() if distribution is not None else 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def mesh(self) -> Any:
        """The ``jax.sharding.Mesh`` of the distribution (None on one device)."""
        return None if self.distribution is None else self.distribution.device_mesh.backend_mesh

    @property
    def axis(self) -> str | None:
        """The mesh axis the batch is split along (None on one device)."""
        return None if self.distribution is None else self.distribution.batch_dim_name

    def loss_scale(self) -> float:
        return 1.0

    def prepare_optimizer(self, optimizer: Any) -> None:
        """Nothing to adapt: the trainer hands the optimizer reduced gradients."""

    def allreduce_mean(self, value: Any) -> Any:
        """Metrics are computed on the global batch already: the identity."""
        return value

    def broadcast_variables(self, variables: Any, root_rank: int = 0) -> None:
        """Every process builds the same weights from the same seed or file: nothing to do."""

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if self.distribution is None else self.distribution.scope()

    def barrier(self) -> None:
        if self.size > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("adv_large_batch barrier")

    def __repr__(self) -> str:
        return (
            f"JaxBackend(processes={self.size}, devices={self.devices}, rank={self.rank}, "
            f"local_devices={self.num_replicas_in_sync})"
        )


_BACKEND: list[JaxBackend] = []


def get_jax_backend() -> JaxBackend:
    """This process's JAX backend, made once: joins the multi-process job when the launcher
    set ``JOB_ENV``, then sets ``DataParallel`` over every device when there are several
    (a distribution set by the caller before is kept)."""
    if not _BACKEND:
        import jax

        if in_multi_process_job() and not jax.distributed.is_initialized():
            keras.distribution.initialize()  # CPU devices talk through gloo, GPUs through NCCL
        distribution = keras.distribution.distribution()
        if distribution is None and jax.device_count() > 1:
            distribution = keras.distribution.DataParallel(devices=jax.devices())
            keras.distribution.set_distribution(distribution)
        if distribution is not None and jax.process_count() > 1:
            # Every process feeds its own slice already (the NumPy inputs take rank/size);
            # Keras would otherwise insist on a tf.data.Dataset to shard.
            distribution.auto_shard_dataset = False
        _BACKEND.append(JaxBackend(distribution))
    return _BACKEND[0]


__all__ = ["JAX_ALTERNATIVE", "JOB_ENV", "JaxBackend", "get_jax_backend", "in_multi_process_job"]
