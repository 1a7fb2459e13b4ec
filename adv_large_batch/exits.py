"""Exit statuses of ``adv-large-batch`` and the faults that end a run with them.

What a launcher (``horovodrun``, a scheduler, a retry loop) reads from a run's status:

* 0 ``EXIT_OK``: the command finished;
* 2 ``EXIT_BAD_INPUT``: a bad flag value, a missing file or folder, no intact checkpoint to
  resume from; nothing was trained (``ConfigError``);
* 3 ``EXIT_NONFINITE``: training stopped at a non-finite loss/gradient (``--on-nonfinite
  stop``); the newest checkpoint is from before that step;
* 74 ``EXIT_CHECKPOINT_WRITE`` (sysexits' EX_IOERR): a checkpoint could not be written (no
  space left, a read-only folder); its partial folder was removed, the newest intact
  checkpoint is untouched: free space, then ``--resume`` (``CheckpointWriteError``);
* 75 ``EXIT_PREEMPTED`` (EX_TEMPFAIL): SIGTERM / SIGINT; the step every worker agreed on was
  checkpointed: rerun with ``--resume`` (``Preempted``).

A process killed outright (``kill -9``, the OOM killer) has no say; ``horovodrun`` then ends
the job with a non-zero status (README, "Faults").  Light on purpose: no TensorFlow import.
"""

from __future__ import annotations

EXIT_OK, EXIT_BAD_INPUT, EXIT_NONFINITE = 0, 2, 3
EXIT_CHECKPOINT_WRITE, EXIT_PREEMPTED = 74, 75


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (no space left, a read-only folder): its partial
    folder is removed and every older checkpoint is untouched (``EXIT_CHECKPOINT_WRITE``)."""


class Preempted(Exception):
    """Training ended after ``step`` because of ``signal_name``; ``checkpoint``: the folder
    written for that step (None: there was no ``--checkpoint-dir``)."""

    def __init__(self, step: int, signal_name: str, checkpoint: str | None, is_chief: bool):
        super().__init__(f"preempted by {signal_name} after step {step}")
        self.step = step
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.is_chief = is_chief

    def report(self, command: str, resume_command: str) -> str:
        """The one line a preempted run prints (``resume_command``: the command to rerun)."""
        head = f"[{command}] preempted by {self.signal_name} after step {self.step}: "
        if self.checkpoint is None:
            return head + "nothing could be saved (no --checkpoint-dir); rerun from the start"
        return head + f"checkpoint {self.checkpoint} written; resume with: {resume_command}"


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CHECKPOINT_WRITE",
    "EXIT_NONFINITE",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "CheckpointWriteError",
    "Preempted",
]
