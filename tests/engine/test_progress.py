"""The progress line in a log file: whole lines, no carriage returns (issue 23, item 8).

On a cluster stdout goes to a file; before, ``--verbose 1`` rewrote its line with ``\\r``
there too, so the log held one line of every step's text per epoch.  The callback tests
drive a real tiny ``model.fit`` with it on a real stream: an open file, an ``io.StringIO``
or a pseudo-terminal (a real tty)."""

from __future__ import annotations

import io
import os
import sys
import threading
import tty
import types

import keras
import numpy as np
import pytest

from adv_large_batch.engine import progress
from adv_large_batch.engine.progress import Progress

EPOCHS, STEPS = 3, 8


def fit(callback):
    """A tiny regression, ``EPOCHS`` epochs of ``STEPS`` steps, with ``callback``."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    x = np.random.default_rng(0).normal(size=(STEPS * 8, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    callbacks = callback if isinstance(callback, list) else [callback]
    model.fit(x, y, batch_size=8, epochs=EPOCHS, verbose=0, shuffle=False, callbacks=callbacks)


def heads(lines):
    """``["Epoch 1/3 - 8/8", ...]``: the epoch and step count that start each line."""
    return [" - ".join(line.split(" - ")[:2]) for line in lines]


def test_is_dynamic_true_only_on_a_terminal_or_a_notebooks_stdout(tmp_path, capsys):
    """(``capsys``: sys.stdout is pytest's capture, no tty, even under ``pytest -s``.)"""
    is_dynamic = progress.is_dynamic
    with open(tmp_path / "log", "w") as file:
        assert not is_dynamic(file)
        # Keras' Progbar also counts "posix" in sys.modules, always true on Linux.
        assert not is_dynamic(file, modules={"posix": os, "ipykernel": os})
    assert not is_dynamic(io.StringIO())
    assert not is_dynamic(object())
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        assert is_dynamic(terminal)
    os.close(master)
    # A notebook's stdout is no tty but renders "\r"; only the process' own stdout counts.
    assert not is_dynamic(sys.stdout, modules={}, environ={})
    assert is_dynamic(sys.stdout, modules={"ipykernel": os}, environ={})
    assert is_dynamic(sys.stdout, modules={}, environ={"PYCHARM_HOSTED": "1"})
    assert not is_dynamic(io.StringIO(), modules={"ipykernel": os}, environ={})


def test_a_log_file_gets_one_whole_line_per_epoch(tmp_path):
    """With the default interval (60 s, far longer than these epochs).  Before: ``\\r``
    before every step's line, so a log line per epoch held all 8 rewrites."""
    path = tmp_path / "job.log"
    with open(path, "w") as log:
        fit(Progress(1, ("mae",), 8, stream=log))
    text = path.read_text()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert heads(lines) == [f"Epoch {e}/{EPOCHS} - {STEPS}/{STEPS}" for e in (1, 2, 3)]
    assert all(line.endswith(" s") and len(line) < 200 for line in lines)  # final lines


def test_interval_0_writes_one_line_per_step(tmp_path):
    stream = io.StringIO()
    fit(Progress(1, ("mae",), 8, stream=stream, interval=0))
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert heads(lines) == [
        f"Epoch {e}/{EPOCHS} - {s}/{STEPS}" for e in (1, 2, 3) for s in range(1, STEPS + 1)
    ]
    assert all("mae " in line and "lr " in line for line in lines)


def test_within_an_epoch_at_most_one_line_per_interval(monkeypatch):
    """A clock that moves 25 s per step, interval 60: lines at steps 3 (75 s) and 6 (75 s
    after), then the final line at step 8, in every epoch."""
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(time=lambda: clock.now))

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            clock.now += 25.0

    stream = io.StringIO()
    fit([Tick(), Progress(1, ("mae",), 8, stream=stream, interval=60)])
    text = stream.getvalue()
    assert "\r" not in text
    assert heads(text.splitlines()) == [
        f"Epoch {e}/{EPOCHS} - {s}/{STEPS}" for e in (1, 2, 3) for s in (3, 6, 8)
    ]


def test_interval_must_not_be_negative():
    with pytest.raises(ValueError, match="interval"):
        Progress(1, ("mae",), 8, interval=-1)


def test_a_terminal_still_gets_the_line_rewritten_after_every_step():
    """Unchanged on a tty (a pseudo-terminal here), whatever ``interval`` says."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no "\n" -> "\r\n" translation: read back what was written
    chunks = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the slave side is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with os.fdopen(slave, "w") as terminal:
        fit(Progress(1, ("mae",), 8, stream=terminal, interval=3600))
    reader.join(timeout=30)
    os.close(master)
    text = b"".join(chunks).decode()
    epochs = text.split("\n")
    assert epochs[-1] == "" and len(epochs) == EPOCHS + 1
    for number, epoch in enumerate(epochs[:-1], start=1):
        # A rewrite per step, then the final line rewrites the last once more.
        rewrites = epoch.split("\r")
        assert rewrites[0] == "" and len(rewrites) == STEPS + 2
        assert heads(rewrites[1:]) == [
            *(f"Epoch {number}/{EPOCHS} - {s}/{STEPS}" for s in range(1, STEPS + 1)),
            f"Epoch {number}/{EPOCHS} - {STEPS}/{STEPS}",
        ]
        assert rewrites[-1].endswith(" s")


# ---- model.fit from Python: the same short line (issue 24, item 1) --------------------------
def tiny_trainer():
    """A real ``AccumulatingTrainer`` (2 micro-batches per step) with ``accuracy``."""
    from adv_large_batch.engine.trainer import AccumulatingTrainer

    keras.utils.set_random_seed(0)
    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    trainer = AccumulatingTrainer(network, micro_batch_size=8)
    trainer.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return trainer, x, rng.integers(0, 3, 64).astype("int32")


@pytest.mark.parametrize("verbose", [None, "auto", 1, 2])
def test_fit_from_python_prints_the_short_line_and_keeps_every_metric(verbose, capsys):
    """Before: Keras' bar with ~8 entries (``loss_scale_skips: 0.0000e+00``, ...)."""
    trainer, x, y = tiny_trainer()
    kwargs = {} if verbose is None else {"verbose": verbose}
    history = trainer.fit(x, y, batch_size=16, epochs=2, shuffle=False, **kwargs)
    lines = capsys.readouterr().out.splitlines()
    assert heads(lines) == ["Epoch 1/2 - 4/4", "Epoch 2/2 - 4/4"]  # stdout is no terminal
    for line in lines:
        assert " - loss " in line and " - accuracy " in line and " ex/s - " in line
        assert "loss_scale_skips" not in line and "grad_norm" not in line and "e+00" not in line
    logged = {"loss", "accuracy", "grad_norm", "loss_scale_skips", "nonfinite_steps"}
    assert logged <= set(history.history)  # every scalar still in the History


def test_fit_verbose_0_prints_nothing(capsys):
    trainer, x, y = tiny_trainer()
    history = trainer.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""
    assert "loss_scale_skips" in history.history


def test_fit_progress_leaves_the_callers_choice():
    trainer, x, _ = tiny_trainer()
    bar = keras.callbacks.ProgbarLogger()
    assert progress.fit_progress(trainer, [bar], "auto", x, {}) == ([bar], "auto")
    own = Progress(2, ("accuracy",), 64)
    assert progress.fit_progress(trainer, [own], 1, x, {}) == ([own], 0)  # no second line
    assert progress.fit_progress(trainer, None, 0, x, {}) == ([], 0)
    callbacks, verbose = progress.fit_progress(trainer, [], 2, x, {"batch_size": 16})
    (added,) = callbacks
    assert verbose == 0 and added.verbose == 2 and added.unit == "ex/s"
    assert added.global_batch_size == 16 and added.metrics is None  # the compiled ones


def test_fit_progress_counts_every_worker_and_prints_on_the_chief_only():
    trainer, x, _ = tiny_trainer()
    chief = types.SimpleNamespace(is_chief=True, size=4)
    model = types.SimpleNamespace(backend=chief, throughput_unit="img/s")
    (added,), verbose = progress.fit_progress(model, [], "auto", x, {"batch_size": 16})
    assert (added.verbose, added.global_batch_size, added.unit, verbose) == (1, 64, "img/s", 0)
    worker = types.SimpleNamespace(backend=types.SimpleNamespace(is_chief=False, size=4))
    assert progress.fit_progress(worker, [], "auto", x, {}) == ([], 0)


def test_fit_batch_size_from_the_call_or_the_data():
    import tensorflow as tf

    x = np.zeros((40, 3), "float32")
    data = tf.data.Dataset.from_tensor_slices((x, x))
    assert progress.fit_batch_size(x, {"batch_size": 8}) == 8
    assert progress.fit_batch_size(x, {}) == progress.KERAS_DEFAULT_BATCH_SIZE
    assert progress.fit_batch_size(data.batch(8, drop_remainder=True), {}) == 8
    assert progress.fit_batch_size(data.batch(8), {}) is None  # the last batch is shorter
    assert progress.fit_batch_size(iter([]), {}) is None


def test_an_unknown_batch_size_leaves_out_the_throughput():
    stream = io.StringIO()
    fit(Progress(2, None, None, stream=stream))  # metrics None: the compiled "mae"
    lines = stream.getvalue().splitlines()
    assert len(lines) == EPOCHS
    assert all(" - mae " in line and "ex/s" not in line for line in lines)


def test_positional_fit_arguments_bind_as_in_keras_and_validation_metrics_are_shown(capsys):
    """``fit(x, y, 16, 2, 2)`` is batch_size, epochs, verbose as in Keras (before: verbose
    given twice, a TypeError; and the throughput assumed 32 rows); a metric of several
    words shows its ``val_`` twin (before: ``val_sparse_categorical_accuracy`` was left out)."""
    trainer, x, y = tiny_trainer()
    trainer.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    history = trainer.fit(x, y, 16, 2, 2, validation_data=[x[:16], y[:16]])
    assert len(history.history["loss"]) == 2 and int(trainer.optimizer.iterations) == 8
    lines = capsys.readouterr().out.splitlines()
    assert heads(lines) == ["Epoch 1/2 - 4/4", "Epoch 2/2 - 4/4"]
    assert all(" - val_sparse_categorical_accuracy " in line for line in lines)
