"""The knobs every training run shares (text and images), declared once: ``RunConfig``.

``FinetuneConfig`` and ``ImageTrainConfig`` extend ``RunConfig``; a subclass
re-declares a field only to change its default.  The choices of ``--on-nonfinite`` and
``--strategy`` come from the engine that implements them (``engine/strategies.py``
imports no TensorFlow, so the flags parse on the JAX backend).  Flags the
process's Keras backend cannot run are refused here too (``jax_checks.backend_problem``).
"""

from __future__ import annotations

import dataclasses

import keras

from adv_large_batch.commands.jax_checks import backend_problem
from adv_large_batch.engine.callbacks import NONFINITE_POLICIES
from adv_large_batch.engine.strategies import BACKEND_KINDS, MULTIWORKER_REFUSED
from adv_large_batch.flags import ConfigError, cli_field, require

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Batch, length, seed, distribution and output knobs of a run."""

    batch_size: int = cli_field(32, "--batch-size", "global batch size (all workers)")
    micro_batch_size: int | None = cli_field(
        None,
        "--micro-batch-size",
        "rows per forward/backward pass on one replica (default: the whole replica batch)",
    )
    epochs: int = cli_field(3, "--epochs", "training epochs")
    train_limit: int | None = cli_field(
        None, "--train-limit", "use only the first N training examples"
    )
    eval_limit: int | None = cli_field(
        None, "--eval-limit", "use only the first N evaluation examples"
    )
    seed: int = cli_field(0, "--seed", "seed for the new weights, shuffling and perturbations")
    strategy: str = cli_field("auto", "--strategy", "distribution backend", BACKEND_KINDS)
    precision: str = cli_field(
        "float32",
        "--precision",
        "compute precision: Keras' global dtype policy for the run (weights stay float32; "
        "mixed_float16 adds Keras' dynamic loss scaling)",
        PRECISIONS,
    )
    logdir: str | None = cli_field(None, "--logdir", "TensorBoard log folder")
    profile: bool = cli_field(
        False, "--profile", "write a TensorBoard profile of training steps 2-4 under --logdir"
    )
    checkpoint_dir: str | None = cli_field(
        None, "--checkpoint-dir", "where to keep the resumable backup and per-epoch weights"
    )
    checkpoint_every: int | None = cli_field(
        None,
        "--checkpoint-every",
        "optimizer steps between resumable checkpoints in --checkpoint-dir (default: each epoch)",
    )
    resume: bool = cli_field(
        False, "--resume", "continue from the newest complete checkpoint in --checkpoint-dir"
    )
    stop_at_step: int | None = cli_field(
        None, "--stop-at-step", "stop (after checkpointing) once this many optimizer steps are done"
    )
    on_nonfinite: str = cli_field(
        "stop",
        "--on-nonfinite",
        "a step with a non-finite loss/gradient is never applied; stop the run or go on",
        NONFINITE_POLICIES,
    )
    metrics_out: str | None = cli_field(
        None, "--metrics-out", "write final metrics + config as JSON"
    )
    verbose: int = cli_field(
        1,
        "--verbose",
        "0 silent, 1 a progress line rewritten every step (in a log file: a line at most every "
        "60 s and one per epoch), 2 one line per epoch",
        (0, 1, 2),
    )
    dry_run: bool = cli_field(
        False,
        "--dry-run",
        "print the resolved plan (workers, batches, steps, peak LR, warm-up, when the "
        "perturbation turns on, parameter groups) and exit without training",
    )

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        require(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            f"--micro-batch-size must be >= 1, got {self.micro_batch_size}",
        )
        require(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        for flag, value in (
            ("--train-limit", self.train_limit),
            ("--eval-limit", self.eval_limit),
            ("--checkpoint-every", self.checkpoint_every),
            ("--stop-at-step", self.stop_at_step),
        ):
            require(value is None or value >= 1, f"{flag} must be >= 1, got {value}")
        problem = backend_problem(self, keras.config.backend())
        if problem is not None:
            raise ConfigError(problem)
        if self.strategy == "multiworker":
            raise ConfigError(MULTIWORKER_REFUSED)
        require(
            not self.resume or self.checkpoint_dir is not None,
            "--resume needs --checkpoint-dir (the folder the interrupted run wrote)",
        )
        require(
            not self.profile or self.logdir is not None,
            "--profile needs --logdir (the profile is written under it)",
        )
