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

From Python, ``AccumulatingTrainer.fit`` (so ``ScaLA`` and ``ConAdv``) shows the same line
(:func:`fit_progress`): ``model.fit(...)`` with ``verbose="auto"``, 1 or 2 gets ``Progress``
with the compiled metrics instead of Keras' bar; ``verbose=0`` prints nothing.

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

from adv_large_batch import keras_internals


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
        metrics: the task metrics to show (e.g. ``("accuracy",)``), after the loss;
            None: the model's compiled metrics (:func:`compiled_metric_names`, read once
            the first step has built them).
        global_batch_size: examples per step over all workers (for examples/s); None:
            unknown, no throughput is shown.
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
        metrics: Sequence[str] | None,
        global_batch_size: int | None,
        unit: str = "ex/s",
        stream: Any = None,
        interval: float = 60.0,
    ) -> None:
        super().__init__()
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.verbose = verbose
        self.metrics = None if metrics is None else tuple(metrics)
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
        from adv_large_batch.optimizers.schedules import current_learning_rate

        return current_learning_rate(self.model.optimizer)

    def shown_metrics(self) -> tuple[str, ...]:
        """The task metrics of the line: ``metrics``, or the compiled ones once built."""
        if self.metrics is not None:
            return self.metrics
        names = compiled_metric_names(self.model)
        if names is None:
            return ()
        self.metrics = names  # built: they do not change within a fit
        return names

    def line(self, epoch: int, logs: dict[str, Any], final: bool) -> str:
        """The progress line of ``epoch`` (0-based) with ``logs`` (Keras' running means)."""
        seconds = max(time.time() - self._start, 1e-9)
        total = (self.params or {}).get("steps") or self._steps
        parts = [f"Epoch {epoch + 1}/{(self.params or {}).get('epochs', '?')}"]
        parts.append(f"{self._steps}/{total}")
        shown = ("loss", *self.shown_metrics())
        for key in shown:
            if key in logs:
                parts.append(f"{key} {plain(logs[key])}")
        if logs.get("adv_on", 0) > 0 and "regulariser" in logs:
            parts.append(f"regulariser {plain(logs['regulariser'])}")
        parts.append(f"lr {plain(self._learning_rate())}")
        if self.global_batch_size:
            parts.append(f"{self._steps * self.global_batch_size / seconds:.1f} {self.unit}")
        if final:
            for key in sorted(logs):  # val_accuracy, val_mismatched_accuracy, test_accuracy
                if key.startswith(("val_", "test_")) and key.split("_", 1)[1] in shown:
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


def compiled_metric_names(model: Any) -> tuple[str, ...] | None:
    """The names ``model``'s compiled metrics log under (``("accuracy",)``); ``()`` when
    it has none; None while they are not built yet (before the first step is traced)."""
    compiled = keras_internals.compile_metrics(model)
    if compiled is None:
        return ()
    if not compiled.built:
        return None
    return tuple(metric.name for metric in compiled.metrics)


#: ``fit``'s batch size when none is given for arrays (Keras' default).
KERAS_DEFAULT_BATCH_SIZE = 32


def fit_batch_size(x: Any, fit_kwargs: dict[str, Any]) -> int | None:
    """The rows of one of this process' batches in ``fit(x, **fit_kwargs)``, or None.

    ``batch_size=`` if given; a ``tf.data.Dataset``'s static batch dimension (of its first
    tensor); Keras' default (32) for arrays and tensors; None when unknown (a dynamic batch
    dimension, a generator, a ``PyDataset``).
    """
    if fit_kwargs.get("batch_size") is not None:
        return int(fit_kwargs["batch_size"])
    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset only exists once it is imported
    if tf is not None and isinstance(x, tf.data.Dataset):
        specs = [s for s in tf.nest.flatten(x.element_spec) if hasattr(s, "shape")]
        rank = specs[0].shape.rank if specs else None
        return specs[0].shape[0] if rank else None
    if hasattr(x, "shape") or (isinstance(x, (list, tuple, dict)) and x):
        return KERAS_DEFAULT_BATCH_SIZE
    return None


def fit_progress(
    model: Any, callbacks: list | None, verbose: Any, x: Any, fit_kwargs: dict[str, Any]
) -> tuple[list, Any]:
    """``(callbacks, verbose)`` that ``AccumulatingTrainer.fit`` hands to ``keras.Model.fit``:
    the command line's short progress line from Python.

    ``verbose`` ``"auto"`` or 1 (a line rewritten after every step; whole lines when stdout
    is a file, see ``Progress.interval``) or 2 (a line per epoch): ``Progress`` is added
    with the compiled metrics, a throughput over all workers (``model.throughput_unit``,
    default ``ex/s``; global batch: :func:`fit_batch_size` x the backend's workers, omitted
    if unknown) and Keras gets ``verbose=0``: its bar would print every logged scalar.
    Everything still goes to the History and to TensorBoard.  Left as given: ``verbose=0``,
    any other value, and callbacks holding a ``keras.callbacks.ProgbarLogger`` (the caller
    asked for Keras' bar); callbacks holding a ``Progress`` get ``verbose=0`` and no
    second line.  On a Horovod worker other than the chief nothing is printed.
    """
    callbacks = list(callbacks or [])
    if any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
        return callbacks, verbose
    if any(isinstance(c, Progress) for c in callbacks):
        return callbacks, 0
    level = {"auto": 1, 1: 1, 2: 2}.get(verbose)
    if level is None:
        return callbacks, verbose  # 0 (or False), or a value Keras judges
    backend = getattr(model, "backend", None)
    if not getattr(backend, "is_chief", True):
        return callbacks, 0
    batch = fit_batch_size(x, fit_kwargs)
    workers = int(getattr(backend, "size", 1) or 1)
    unit = getattr(model, "throughput_unit", "ex/s")
    progress = Progress(level, None, None if batch is None else batch * workers, unit)
    return [*callbacks, progress], 0


__all__ = [
    "KERAS_DEFAULT_BATCH_SIZE",
    "Progress",
    "compiled_metric_names",
    "fit_batch_size",
    "fit_progress",
    "is_dynamic",
    "plain",
]
