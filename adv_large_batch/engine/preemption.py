"""Preemption: SIGTERM / SIGINT end a run at a step every worker agrees on, checkpointed.

What a scheduler does to a long run (Kubernetes, SLURM, a spot VM, ``horovodrun`` passing
on its own SIGTERM, Ctrl-C): it sends SIGTERM (or SIGINT), waits a grace period, then
kills.  The contract, as TensorFlow's ``PreemptionCheckpointHandler`` and Orbax's
preemption sync set it:

1. the step in flight finishes (the handler only records the signal; Python runs it
   when the compiled step returns to the interpreter);
2. after every step each worker contributes "a signal reached me" to one all-reduce
   (a scalar; Horovod ranks; one process holds every tf.distribute replica), so all
   workers stop after the *same* step, whichever of them the signal reached;
3. that step is checkpointed (``StepCheckpoint.save_now``: the chief writes, whatever
   ``--checkpoint-every`` says, then every worker waits for it), and training ends with
   ``Preempted``: no validation, no further step;
4. the command exits with ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL``: "try again") after
   one line naming the checkpoint and the command that resumes it; without
   ``--checkpoint-dir`` the line says that nothing could be saved.

A second signal while the first is being handled restores the previous handlers and
delivers itself again (SIGTERM: the process dies, status 143; SIGINT: ``KeyboardInterrupt``),
as a user who presses Ctrl-C twice expects.  A signal the process ignores (``SIG_IGN``, as a
shell does for a background job's SIGINT) stays ignored.  A signal during the last
validation or after the last step is taken once ``fit`` returns (``after_fit``); one during
an earlier validation, at the end of the next step; one while the model is built or restored
(the command's watch begins before the distributed backend starts), after the first step.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import keras

from adv_large_batch.exits import Preempted

#: The signals a run treats as preemption.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalWatch:
    """Records the first SIGTERM / SIGINT while active (a context manager); a second one
    kills the process as the default handler would.  Handlers can only be installed from
    the main thread: elsewhere the watch stays inactive and ``requested`` stays None."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS) -> None:
        self.signals = signals
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: die now
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "SignalWatch":
        try:
            for signum in self.signals:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # ignored on purpose (a background job's SIGINT): keep it so
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave the handlers alone
            self._restore()
        return self

    @property
    def active(self) -> bool:
        """True while a handler of this watch is installed."""
        return bool(self._previous)

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def deliver(self) -> None:
        """After the watch: deliver the signal it recorded (if any) to the handlers now
        installed, as if the watch had never been there (SIGTERM's default ends the process
        with status 143; SIGINT's raises ``KeyboardInterrupt``)."""
        if self.requested is not None and not self.active:
            signal.raise_signal(self.requested)

    @property
    def signal_name(self) -> str:
        return "nothing" if self.requested is None else signal.Signals(self.requested).name


class PreemptionCheckpoint(keras.callbacks.Callback):
    """After every training step: stop all workers at the same step once a signal reached
    any of them, checkpoint that step, raise ``Preempted`` (see the module docstring).

    Args:
        watch: the active ``SignalWatch``.
        backend: the run's distributed backend (``allreduce_mean``, ``barrier``, chief).
        save: writes the checkpoint of the model's step and returns its folder, or None
            when the run keeps no checkpoints (``StepCheckpoint.save_now``).
        also_save: the other writers of that step, called first on every worker (ConAdv's
            per-worker buffers: ``WorkerBuffers.save_now``).
    """

    def __init__(
        self,
        watch: SignalWatch,
        backend: Any,
        save: Callable[[], str | None] | None,
        also_save: tuple[Callable[[], None], ...] = (),
    ) -> None:
        super().__init__()
        self.watch = watch
        self.backend = backend
        self.save = save
        self.also_save = also_save

    def agreed(self) -> bool:
        """True on every worker once the signal reached any worker (one scalar all-reduce)."""
        mine = 0.0 if self.watch.requested is None else 1.0
        if self.backend.size == 1:
            return mine > 0
        return float(self.backend.allreduce_mean(mine)) > 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self.agreed():
            return
        from adv_large_batch.engine.checkpointing import data_position

        step = data_position(self.model)
        for write in self.also_save:
            write()
        path = self.save() if self.save is not None else None
        self.backend.barrier()  # every worker leaves after the chief's checkpoint is complete
        raise Preempted(step, self.signal_name(), path, self.backend.is_chief)

    def signal_name(self) -> str:
        return self.watch.signal_name if self.watch.requested is not None else "a signal to a peer"

    def after_fit(self, model: Any, newest_checkpoint: str | None) -> None:
        """A signal that arrived after the last step (or in the last validation): agree once
        more, then ``Preempted`` at the final step (its checkpoint was written at the end of
        ``fit``), so the evaluation that would follow does not outlive the grace period.
        ``model`` is passed in: a run resumed at its last step never calls ``fit``, so
        Keras never gave this callback its model."""
        if self.agreed():
            from adv_large_batch.engine.checkpointing import data_position

            step = data_position(model)
            raise Preempted(step, self.signal_name(), newest_checkpoint, self.backend.is_chief)


__all__ = ["SIGNALS", "PreemptionCheckpoint", "SignalWatch"]
