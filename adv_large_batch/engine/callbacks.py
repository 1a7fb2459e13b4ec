"""The callbacks every training run gets: distributed plumbing, TensorBoard,
checkpoints, learning rate and throughput in the logs.

Only the chief (rank 0) writes files; under Horovod every rank gets the
broadcast of rank 0's initial state and the epoch-end metric averaging.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from adv_large_batch.engine.predict import predict_rows
from adv_large_batch.exits import CheckpointWriteError


class LearningRateAndThroughput(keras.callbacks.Callback):
    """Adds ``learning_rate`` and ``examples_per_s`` (global) to the epoch logs."""

    def __init__(self, global_batch_size: int | None = None) -> None:
        super().__init__()
        self.global_batch_size = global_batch_size
        self._start = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._steps = time.time(), 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        from adv_large_batch.optimizers.schedules import current_learning_rate

        logs["learning_rate"] = current_learning_rate(self.model.optimizer)
        if self.global_batch_size:
            logs["examples_per_s"] = (
                self._steps * self.global_batch_size / max(time.time() - self._start, 1e-9)
            )


class EpochClock(keras.callbacks.Callback):
    """Adds ``elapsed_s`` (wall seconds since training began) and ``elapsed_cpu_s`` (this
    process's CPU seconds since then, all threads) to the epoch logs.

    CPU seconds measure the cost of the run even when other work shares the cores
    (wall time does not); on an otherwise idle machine ``elapsed_cpu_s / cores`` is
    close to ``elapsed_s``.  Validation at the epoch end is included in both.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wall0 = self._cpu0 = 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._wall0, self._cpu0 = time.time(), time.process_time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["elapsed_s"] = time.time() - self._wall0
            logs["elapsed_cpu_s"] = time.process_time() - self._cpu0


class EvaluateSplits(keras.callbacks.Callback):
    """Task metrics of extra evaluation splits at every epoch end, into the logs.

    ``splits`` maps a prefix to ``(dataset, labels, metric_fn)``; ``metric_fn(labels,
    outputs) -> {name: value}``.  Logged as ``<prefix>_<name>`` (e.g. ``test_accuracy``,
    ``val_mismatched_accuracy``), so TensorBoard and the history get them like
    ``val_*``.  The network is the trainer's ``network`` (inference, no dropout).
    """

    def __init__(self, network: Any, splits: dict[str, tuple[Any, Any, Any]]) -> None:
        super().__init__()
        self.network = network
        self.splits = splits

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        for prefix, (dataset, labels, metric_fn) in self.splits.items():
            outputs = predict_rows(self.network, dataset)
            for name, value in metric_fn(labels, outputs).items():
                logs[f"{prefix}_{name}"] = float(value)


class NonFiniteLoss(keras.callbacks.Callback):
    """Reacts to a step whose loss or gradients were not finite.

    The trainer never applies such a step (on any worker or tf.distribute replica: the
    decision is taken from all-reduced values, see ``AccumulatingTrainer.train_step``).
    ``policy="stop"`` ends the run with a message naming the step, and sets the model's
    ``stopped_nonfinite_at``, so no checkpoint is written after it (the last checkpoint
    stays the resume point) and the command exits with ``EXIT_NONFINITE``.
    ``policy="skip"`` reports the skipped step and goes on.
    """

    def __init__(self, policy: str = "stop") -> None:
        super().__init__()
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"policy must be one of {NONFINITE_POLICIES}, got {policy!r}")
        self.policy = policy
        self._seen = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._seen = 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        fraction = float((logs or {}).get("nonfinite_steps", 0.0))
        total = round(fraction * (batch + 1))  # a running mean over this epoch's steps
        if total <= self._seen:
            return
        self._seen = total
        step = int(self.model.batches_seen.numpy())  # the step just run, counted from 1
        if self.policy == "stop":
            self.model.stopped_nonfinite_at = step
            self.model.stop_training = True
            print(
                f"\n[train] non-finite loss/gradients at step {step} (batch {batch} of this "
                "epoch): update skipped, run stopped; the last checkpoint is intact "
                "(--on-nonfinite skip goes on instead)",
                flush=True,
            )
        else:
            print(f"\n[train] non-finite loss/gradients at step {step}: update skipped", flush=True)


NONFINITE_POLICIES = ("stop", "skip")


class EpochWeights(keras.callbacks.ModelCheckpoint):
    """Keras' per-epoch weights file (``epoch_NNN.weights.h5``), whose failed write (a full
    disk) removes the half-written file and raises ``CheckpointWriteError`` (exit 74), as a
    failed step checkpoint does, instead of an ``OSError`` traceback."""

    def __init__(self, filepath: str) -> None:
        super().__init__(filepath, save_weights_only=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from adv_large_batch.engine.checkpointing import needs_gather

        if needs_gather(self.model):
            # Multi-process JAX with a state split over the processes (ConAdv's buffer):
            # the chief cannot read it alone; the step checkpoints hold every weight.
            if epoch == 0:
                print(
                    "[train] per-epoch weights files are not written when the state is split "
                    "over processes (JAX, ConAdv's buffer): the step checkpoints hold it all",
                    flush=True,
                )
            return
        try:
            with _local_variables():
                super().on_epoch_end(epoch, logs)
        except OSError as err:
            path = self.filepath.format(epoch=epoch + 1)
            if os.path.exists(path):
                os.remove(path)
            raise CheckpointWriteError(
                f"could not write {path} ({type(err).__name__}: {err})"
            ) from err


@contextlib.contextmanager
def _local_variables() -> Iterator[None]:
    """No ``keras.distribution`` while it runs: Keras' weights saving creates throwaway
    variables, and under a multi-process JAX distribution creating one is a collective
    that every process must join, so the chief writing alone would hang the job (the
    weights it reads are replicated, each process holds them all)."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def standard_callbacks(
    backend: Any,
    logdir: str | None = None,
    checkpoint_dir: str | None = None,
    global_batch_size: int | None = None,
    trust_ratios: bool = False,
    nonfinite: str = "stop",
    profile_steps: tuple[int, int] | None = None,
    progress: keras.callbacks.Callback | None = None,
    hparams: dict[str, Any] | None = None,
    metrics: Sequence[str] = (),
) -> list[keras.callbacks.Callback]:
    """Broadcast + metric averaging (Horovod), then chief-only writers and ``progress``
    (last: it prints the logs every callback before it completed).

    ``hparams``: the run's config, written to ``logdir`` as TensorBoard hparams.

    ``trust_ratios``: also write LAMB/LARS per-variable trust ratios and update norms
    (the optimizer must be built with ``log_trust_ratios=True``) under ``logdir/trust_ratios``.
    """
    callbacks: list[keras.callbacks.Callback] = [
        NonFiniteLoss(nonfinite),  # first: it marks the model before any checkpoint is written
        LearningRateAndThroughput(global_batch_size),
    ]
    if backend.name == "horovod":  # (never on JAX: distributed imports TensorFlow)
        from adv_large_batch.engine import distributed

        callbacks.insert(0, distributed.BroadcastCallback(backend))
        callbacks.append(distributed.MetricAverageCallback(backend))
    if not backend.is_chief:
        return callbacks
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)  # (resumable step checkpoints: engine.resume)
        callbacks.append(EpochWeights(os.path.join(checkpoint_dir, "epoch_{epoch:03d}.weights.h5")))
    if logdir:
        callbacks.append(
            keras.callbacks.TensorBoard(
                logdir, update_freq="epoch", write_graph=False, profile_batch=profile_steps or 0
            )
        )
        if trust_ratios:
            from adv_large_batch.optimizers import TrustRatioLogger

            callbacks.append(TrustRatioLogger(os.path.join(logdir, "trust_ratios")))
        if hparams is not None:
            callbacks.append(HParamsLogger(logdir, hparams, metrics))
    if progress is not None:
        callbacks.append(progress)
    return callbacks


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested run config as TensorBoard hparams: ``{"run.batch_size": 1024, ...}``, every
    value a bool, int, float or str (tuples and lists as text, None as "none")."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is None:
            out[name] = "none"
        else:
            out[name] = json.dumps(value)
    return out


class HParamsLogger(keras.callbacks.Callback):
    """Writes the run's resolved configuration once, at the start of training, into the
    TensorBoard folder: as hparams (the HParams tab compares runs by them, against the
    epoch metrics Keras' TensorBoard callback writes under ``train/`` and ``validation/``)
    and as a JSON text summary."""

    def __init__(self, logdir: str, config: dict[str, Any], metrics: Sequence[str]) -> None:
        super().__init__()
        self.logdir = logdir
        self.config = config
        self.metrics = tuple(metrics)

    def on_train_begin(self, logs: dict | None = None) -> None:
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp

        values = flat_hparams(self.config)
        tracked = [
            hp.Metric(f"epoch_{name}", group=group, display_name=f"{group} {name}")
            for name in ("loss", *self.metrics)
            for group in ("train", "validation")
        ]
        with tf.summary.create_file_writer(self.logdir).as_default():
            hp.hparams_config(hparams=[hp.HParam(k) for k in values], metrics=tracked)
            hp.hparams(values, trial_id=os.path.basename(os.path.abspath(self.logdir)))
            tf.summary.text("run_config", json.dumps(self.config, indent=1), step=0)
