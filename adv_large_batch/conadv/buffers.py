"""Each worker's own ConAdv buffer, kept across checkpoints (``WorkerBuffers``)."""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from adv_large_batch.engine import checkpointing
from adv_large_batch.exits import CheckpointWriteError


def replica_components(variable: Any, strategy: Any) -> list[Any]:
    """The per-replica variables behind a Keras variable created under the tf.distribute
    ``strategy`` (``experimental_local_results``; one for the default strategy)."""
    return list(strategy.experimental_local_results(variable.value))


class WorkerBuffers(keras.callbacks.Callback):
    """Keeps ConAdv's buffer per worker across checkpoints.

    The buffer holds each worker's (and each tf.distribute replica's) own adversarial
    batch (``BroadcastCallback`` leaves it alone: it is one of the trainer's
    ``per_worker_variables``), but the checkpoint holds rank 0's replica 0's.  So every
    worker also writes its own buffer, all replicas, to
    ``<checkpoint-dir>/worker-buffers/ckpt-<step>-rank<r>.npz`` (atomically, at the
    steps ``StepCheckpoint`` saves, newest two kept); ``load`` reads it on resume and
    the values are put back at the first batch of the resumed ``fit``.
    """

    def __init__(
        self, variables: list[Any], directory: str | None, every: int, rank: int, keep: int = 2
    ) -> None:
        super().__init__()
        self.variables = variables
        self.folder = os.path.join(directory, "worker-buffers") if directory else None
        self.every = every
        self.rank = rank
        self.keep = keep
        self._pending: list[list[Any]] | None = None

    def _path(self, step: int) -> str:
        return os.path.join(self.folder, f"ckpt-{step:08d}-rank{self.rank}.npz")

    def _values(self) -> list[list[Any]]:
        return [
            [c.numpy() for c in replica_components(v, self.model.distribute_strategy)]
            for v in self.variables
        ]

    def load(self, step: int) -> bool:
        """Stage this worker's buffer saved at ``step``; False if there is none."""
        if self.folder is None or not os.path.exists(self._path(step)):
            return False
        with np.load(self._path(step)) as data:
            self._pending = [list(data[f"v{i}"]) for i in range(len(self.variables))]
        return True

    def _save(self, step: int) -> None:
        if self.model.stopped_nonfinite_at is not None:
            return  # StepCheckpoint writes nothing after a non-finite stop either
        if self.folder is None or os.path.exists(self._path(step)):
            return
        partial = self._path(step) + ".partial.npz"
        try:
            os.makedirs(self.folder, exist_ok=True)
            arrays = {f"v{i}": np.stack(values) for i, values in enumerate(self._values())}
            np.savez(partial, **arrays)
        except OSError as err:  # a full disk: no partial file left, older files untouched
            if os.path.exists(partial):
                os.remove(partial)
            raise CheckpointWriteError(
                f"could not write worker buffer {self._path(step)} ({type(err).__name__}: {err})"
            ) from err
        os.replace(partial, self._path(step))
        mine = sorted(n for n in os.listdir(self.folder) if n.endswith(f"-rank{self.rank}.npz"))
        for old in mine[: -self.keep]:
            os.remove(os.path.join(self.folder, old))

    def save_now(self) -> None:
        """Write this worker's buffer of the model's step now (a preempted run's step)."""
        self._save(checkpointing.data_position(self.model))

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self._pending is None:
            return
        for variable, values in zip(self.variables, self._pending):
            components = replica_components(variable, self.model.distribute_strategy)
            if len(components) != len(values):
                raise ValueError(
                    f"saved adversarial buffer has {len(values)} replicas, this worker "
                    f"{len(components)}: resume with the same --strategy and devices"
                )
            for component, value in zip(components, values):
                component.assign(value)
        self._pending = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = checkpointing.data_position(self.model)
        if step % self.every == 0:
            self._save(step)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._save(checkpointing.data_position(self.model))
