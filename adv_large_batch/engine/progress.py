"""What a person watches while a run trains: one short line, in plain numbers.

Keras' progress bar prints every logged scalar (14 of them for ScaLA, many in scientific
notation), so the line wraps and the loss is hard to find.  ``Progress`` replaces it
(``fit(verbose=0)`` plus this callback): the loss, the task metric, the regulariser once
the perturbation is on, the learning rate and examples/s, then at the epoch end the
validation (and test) metrics.  Every other scalar still goes to TensorBoard and
``--metrics-out``.  ``--verbose 1``: on a terminal the line is rewritten (``\\r``) after
every step; ``--verbose 2``: one line per epoch.

When the stream is not a terminal (stdout redirected to a file, as on a cluster) a
rewritten line would pile up in the log as one line of every step's text (about 100,000
characters for a 1,000-step epoch), so ``--verbose 1`` never writes ``\\r`` there: it
writes a whole line at most every ``interval`` seconds within an epoch (default 60) and
always the epoch's final line, each ending in a newline.  :func:`is_dynamic` decides.

```
Epoch 2/6 - 54/54 - loss 0.4127 - accuracy 0.8125 - regulariser 0.0213 - lr 0.00283 -
  68.2 ex/s - val_accuracy 0.8102 - val_loss 0.4411 - 812 s          (one line)
```
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras


def plain(value: float) -> str:
    """A number in plain notation where it fits in four significant digits (0.000283,
    68.2, 0.8125), scientific only beyond (1e-09)."""
    return f"{float(value):.4g}"


def is_dynamic(
    stream: Any,
    modules: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Whether ``stream`` shows a line rewritten in place with ``\\r`` (a terminal, a
    notebook), rather than keeping every write (a file, a pipe).

    True if ``stream.isatty()`` is; or if ``stream`` is the process' stdout/stderr while
    ipykernel is loaded (a notebook's output is no tty but renders ``\\r``) or PyCharm's
    run console is (``PYCHARM_HOSTED``), as in Keras' ``Progbar``.  Unlike Keras, not
    merely because the ``posix`` module is loaded: it always is on Linux, which makes
    Keras' bar rewrite its line into log files too.  ``modules`` / ``environ`` default to
    ``sys.modules`` / ``os.environ`` (given only by tests).
    """
    isatty = getattr(stream, "isatty", None)
    try:
        if callable(isatty) and isatty():
            return True
    except (ValueError, OSError):  # closed or detached
        return False
    modules = sys.modules if modules is None else modules
    environ = os.environ if environ is None else environ
    standard = stream is not None and any(
        stream is std for std in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    )
    return standard and ("ipykernel" in modules or "PYCHARM_HOSTED" in environ)


class Progress(keras.callbacks.Callback):
    """The run's progress line (see the module docstring).

    Args:
        verbose: 1 (a line rewritten after every step; not on a terminal, see
            ``interval``) or 2 (a line per epoch).
        metrics: the task metrics to show (e.g. ``("accuracy",)``), after the loss.
        global_batch_size: examples per step over all workers (for examples/s).
        unit: the unit of the throughput (``ex/s``; ``img/s`` for images).
        stream: where to write (default ``sys.stdout``, looked up at each write).
        interval: with ``verbose=1`` on a stream that is not a terminal
            (:func:`is_dynamic` false), the least number of seconds between two lines
            within an epoch; each is a whole line ending in a newline, and the epoch's
            final line is always written.  0: a line per step.  Default 60; an attribute,
            so settable after construction.  Unused on a terminal and with ``verbose=2``.
    """

    def __init__(
        self,
        verbose: int,
        metrics: Sequence[str],
        global_batch_size: int,
        unit: str = "ex/s",
        stream: Any = None,
        interval: float = 60.0,
    ) -> None:
        super().__init__()
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.verbose = verbose
        self.metrics = tuple(metrics)
        self.global_batch_size = global_batch_size
        self.unit = unit
        self.stream = stream
        self.interval = interval
        self._start = 0.0
        self._steps = 0
        self._epoch = 0
        self._dynamic = True
        self._last_line = 0.0

    def _stream(self) -> Any:
        return self.stream or sys.stdout

    def _write(self, text: str) -> None:
        self._stream().write(text)
        self._stream().flush()

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
        self._last_line = self._start
        self._dynamic = is_dynamic(self._stream())  # once per epoch, not per step

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps += 1
        if self.verbose != 1:
            return
        if self._dynamic:
            self._write("\r" + self.line(self._epoch, logs or {}, final=False))
            return
        if self._steps == (self.params or {}).get("steps"):
            return  # the epoch's final line, with the validation metrics, follows
        now = time.time()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._write(self.line(self._epoch, logs or {}, final=False) + "\n")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        text = self.line(epoch, logs or {}, final=True)
        rewrite = self.verbose == 1 and self._dynamic
        self._write(("\r" if rewrite else "") + text + "\n")


__all__ = ["Progress", "is_dynamic", "plain"]
