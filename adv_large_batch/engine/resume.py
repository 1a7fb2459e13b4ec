"""Resuming a run: restore the newest intact checkpoint, then ``fit`` from its step.

``resume_step`` restores (``checkpointing.restore_checkpoint``) and returns the data
position, ``fit_from_step`` runs ``model.fit`` over the deterministic batch stream from
there (first the rest of an interrupted epoch, then whole epochs), and ``step_callbacks``
are the writers of a resumable run: ``StepCheckpoint``, ``StopAtStep`` and the
``PreemptionCheckpoint`` of a SIGTERM / SIGINT (``engine.preemption``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from adv_large_batch.engine.checkpointing import (
    StepCheckpoint,
    complete_checkpoints,
    data_position,
    resolve_checkpoint,
    restore_checkpoint,
)
from adv_large_batch.engine.preemption import PreemptionCheckpoint, SignalWatch


class StopAtStep(keras.callbacks.Callback):
    """Ends training once ``step`` training steps (batches) are done (a budgeted or
    interrupted run)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if data_position(self.model) >= self.step:
            self.model.stop_training = True


def fit_from_step(
    model: Any,
    stream: Any,
    start_step: int,
    steps_per_epoch: int,
    epochs: int,
    **fit_kwargs: Any,
) -> Any:
    """``model.fit`` over the batch stream from global step ``start_step`` to the end.

    A run resumed mid-epoch first finishes that epoch (a shorter fit), then runs
    the remaining whole epochs; the histories are concatenated.
    """
    epoch, in_epoch = divmod(start_step, steps_per_epoch)
    phases = []  # (first global step, initial epoch, end epoch, steps per epoch)
    if in_epoch:
        phases.append((start_step, epoch, epoch + 1, steps_per_epoch - in_epoch))
        epoch += 1
    if epoch < epochs:
        phases.append((epoch * steps_per_epoch, epoch, epochs, steps_per_epoch))
    merged: dict[str, list] = {}
    history = keras.callbacks.History()  # stays empty if the checkpoint was the last step
    for first_step, initial_epoch, end_epoch, steps in phases:
        history = model.fit(
            stream(first_step),
            initial_epoch=initial_epoch,
            epochs=end_epoch,
            steps_per_epoch=steps,
            shuffle=False,  # the stream is already shuffled, deterministically per epoch
            **fit_kwargs,
        )
        for key, values in history.history.items():
            merged.setdefault(key, []).extend(values)
        if model.stop_training:
            break
    history.history = merged
    return history


def resume_step(
    directory: str, model: keras.Model, backend: Any, say: Callable[[str], None], tag: str
) -> int:
    """Restore the newest intact checkpoint in ``directory``; return its global step (0:
    none there yet, start from scratch).  ``ConfigError`` if every checkpoint is damaged.

    Restoring may build the optimizer, so it runs inside the backend's scope (under a
    strategy the slots must be distributed variables).
    """
    if not complete_checkpoints(directory):
        say(f"[{tag}] --resume: no complete checkpoint in {directory}; starting from scratch")
        return 0
    path = resolve_checkpoint(directory)  # newest intact; ConfigError if none
    with backend.scope():
        meta = restore_checkpoint(path, model)
    step = int(meta["global_step"])
    say(f"[{tag}] resumed from {path} at step {step}")
    return step


def step_callbacks(
    directory: str | None,
    every: int | None,
    stop_at_step: int | None,
    steps_per_epoch: int,
    backend: Any,
    meta: dict[str, Any],
    watch: SignalWatch | None = None,
    also_save: tuple[Callable[[], None], ...] = (),
) -> list[keras.callbacks.Callback]:
    """The writers of a resumable run, last in the callback list: ``StepCheckpoint`` into
    ``directory`` every ``every`` steps (default: each epoch), ``StopAtStep(stop_at_step)``,
    each when given, and with an active signal ``watch`` the ``PreemptionCheckpoint`` that
    checkpoints the step a SIGTERM / SIGINT arrived at (after the other writers of that step,
    ``also_save``); ``meta``: ``checkpointing.run_record``."""
    callbacks: list[keras.callbacks.Callback] = []
    writer = None
    if directory:
        writer = StepCheckpoint(
            directory,
            every or steps_per_epoch,
            steps_per_epoch,
            meta,
            backend.is_chief,
            backend=backend,
        )
        callbacks.append(writer)
    if stop_at_step is not None:
        callbacks.append(StopAtStep(stop_at_step))
    if watch is not None and watch.active:
        save = writer.save_now if writer is not None else None
        callbacks.append(PreemptionCheckpoint(watch, backend, save, also_save))
    return callbacks


__all__ = ["StopAtStep", "fit_from_step", "resume_step", "step_callbacks"]
