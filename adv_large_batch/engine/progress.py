"""What a person watches while a run trains: one short line, in plain numbers.

Keras' progress bar prints every logged scalar (14 of them for ScaLA, many in scientific
notation), so the line wraps and the loss is hard to find.  ``Progress`` replaces it
(``fit(verbose=0)`` plus this callback): the loss, the task metric, the regulariser once
the perturbation is on, the learning rate and examples/s, then at the epoch end the
validation (and test) metrics.  Every other scalar still goes to TensorBoard and
``--metrics-out``.  ``--verbose 1``: the line is rewritten after every step; ``--verbose
2``: one line per epoch.

```
Epoch 2/6 - 54/54 - loss 0.4127 - accuracy 0.8125 - regulariser 0.0213 - lr 0.00283 -
  68.2 ex/s - val_accuracy 0.8102 - val_loss 0.4411 - 812 s          (one line)
```
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import keras


def plain(value: float) -> str:
    """A number in plain notation where it fits in four significant digits (0.000283,
    68.2, 0.8125), scientific only beyond (1e-09)."""
    return f"{float(value):.4g}"


class Progress(keras.callbacks.Callback):
    """The run's progress line (see the module docstring).

    Args:
        verbose: 1 (a line rewritten after every step) or 2 (a line per epoch).
        metrics: the task metrics to show (e.g. ``("accuracy",)``), after the loss.
        global_batch_size: examples per step over all workers (for examples/s).
        unit: the unit of the throughput (``ex/s``; ``img/s`` for images).
        stream: where to write (default ``sys.stdout``).
    """

    def __init__(
        self,
        verbose: int,
        metrics: Sequence[str],
        global_batch_size: int,
        unit: str = "ex/s",
        stream: Any = None,
    ) -> None:
        super().__init__()
        self.verbose = verbose
        self.metrics = tuple(metrics)
        self.global_batch_size = global_batch_size
        self.unit = unit
        self.stream = stream
        self._start = 0.0
        self._steps = 0
        self._epoch = 0

    def _write(self, text: str) -> None:
        (self.stream or sys.stdout).write(text)
        (self.stream or sys.stdout).flush()

    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def line(self, epoch: int, logs: dict[str, Any], final: bool) -> str:
        """The progress line of ``epoch`` (0-based) with ``logs`` (Keras' running means)."""
        seconds = max(time.time() - self._start, 1e-9)
        total = (self.params or {}).get("steps") or self._steps
        parts = [f"Epoch {epoch + 1}/{(self.params or {}).get('epochs', '?')}"]
        parts.append(f"{self._steps}/{total}")
        for key in ("loss", *self.metrics):
            if key in logs:
                parts.append(f"{key} {plain(logs[key])}")
        if logs.get("adv_on", 0) > 0 and "regulariser" in logs:
            parts.append(f"regulariser {plain(logs['regulariser'])}")
        parts.append(f"lr {plain(self._learning_rate())}")
        parts.append(f"{self._steps * self.global_batch_size / seconds:.1f} {self.unit}")
        if final:
            shown = ("loss", *self.metrics)
            for key in sorted(logs):  # val_accuracy, val_mismatched_accuracy, test_accuracy
                if key.startswith(("val_", "test_")) and key.rsplit("_", 1)[-1] in shown:
                    parts.append(f"{key} {plain(logs[key])}")
            parts.append(f"{seconds:.0f} s")
        return " - ".join(parts)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._steps, self._epoch = time.time(), 0, epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps += 1
        if self.verbose == 1:
            self._write("\r" + self.line(self._epoch, logs or {}, final=False))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        text = self.line(epoch, logs or {}, final=True)
        self._write(("\r" if self.verbose == 1 else "") + text + "\n")


__all__ = ["Progress", "plain"]
