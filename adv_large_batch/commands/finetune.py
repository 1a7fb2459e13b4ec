"""The fine-tuning run behind ``adv-large-batch finetune``, top to bottom.

config -> backend -> task data -> tokenised batches -> classifier -> optimizer
       -> ScaLA trainer -> callbacks -> fit -> task metrics -> metrics JSON

Every value is validated (``FinetuneConfig``, ``ScaLAConfig``,
``OptimizerConfig``) before TensorFlow builds anything.  On the JAX backend
(``KERAS_BACKEND=jax``) the batches are NumPy (``text_pipeline.make_epoch_batches``),
the backend ``jax_distribution.get_jax_backend()`` and the trainer
``scala.jax_trainer.ScaLA``; no TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from adv_large_batch.commands.common import Context, Plan, run_training, split_batch
from adv_large_batch.commands.run_config import RunConfig
from adv_large_batch.data.text_tasks import TASKS
from adv_large_batch.flags import cli_field, require
from adv_large_batch.models.text_classifiers import (
    TINY_MODEL,
    build_tokenizer,
    default_model_path,
    load_text_classifier,
)
from adv_large_batch.optimizers import OptimizerConfig
from adv_large_batch.scala import ScaLAConfig

#: An evaluation set: (batched token features, labels).
EvalSplit = tuple[Any, Any]


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
        "encoder: a local folder, BERT-family or RoBERTa (keras-hub preset or Hugging Face "
        "folder), or a keras-hub preset name/handle (bert_base_en_uncased, kaggle://..., "
        f"hf://...; downloaded by keras-hub); 'bundled' = all-MiniLM-L6-v2; '{TINY_MODEL}' = "
        "a 2-layer random BERT with the bundled vocabulary (smoke tests)",
    )
    max_seq_length: int = cli_field(64, "--max-seq-length", "tokens per example after packing")
    test_each_epoch: bool = cli_field(
        False,
        "--test-each-epoch",
        "also evaluate the labelled test split (rotten_tomatoes) at every epoch end "
        "(logged as test_<metric>)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
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
        not adv.perturbs or adv.start_step is not None or adv.start_epoch <= run.epochs,
        f"--adv-start-epoch {adv.start_epoch} is beyond --epochs {run.epochs}: the perturbation "
        f"would never turn on (allowed: 0..{run.epochs}; epochs count from 1, 0 or 1 = from "
        "the start)",
    )
    return split_batch(run, workers, replicas)[0]


def log_prefix(split_name: str) -> str:
    """The log prefix of an extra validation split: ``validation_mismatched`` ->
    ``val_mismatched`` (so MNLI-mm logs ``val_mismatched_accuracy`` beside ``val_accuracy``)."""
    return split_name.replace("validation", "val", 1)


@dataclasses.dataclass
class TextData:
    """The text half of a fine-tuning plan (``Plan.data``)."""

    task: Any  # text_tasks.TextTask: splits, metrics, classes
    tokenizer: Any
    validation: EvalSplit
    extra_validation: dict[str, EvalSplit]  # MNLI: {"validation_mismatched": MNLI-mm}
    test: EvalSplit | None  # the labelled test split, where the task has one
    untrained_head: dict[str, float] | None = None  # validation metrics, set by before_fit


class FinetuneCommand:
    """``adv-large-batch finetune``: the text parts of the run skeleton (``common``)."""

    name = "finetune"
    unit = "ex/s"

    def prepare(self, ctx: Context, optimizer_config: OptimizerConfig) -> Plan[TextData]:
        """Task -> tokenised splits -> the resumable stream and the evaluation sets
        (tf.data on TensorFlow, NumPy batches trimmed to length buckets on JAX)."""
        from adv_large_batch.data import text_pipeline, text_tasks

        run_cfg, backend = ctx.run, ctx.backend
        validate_run(run_cfg, ctx.adversarial, backend.size, backend.num_replicas_in_sync)
        if run_cfg.model != TINY_MODEL:
            from adv_large_batch.models.encoder_presets import encoder_architecture

            encoder_architecture(run_cfg.model_path, what="--model")  # bad folder: exit 2
        self._warn_precision(ctx)
        task = text_tasks.load_task(run_cfg.task, run_cfg.data_source, run_cfg.data_dir)
        train = task.train.take(run_cfg.train_limit)
        require(
            len(train) // backend.size >= ctx.per_worker_batch,
            f"--batch-size {run_cfg.batch_size} is larger than the {len(train)} training "
            "examples: not one full step per epoch",
        )
        for split_name, count in task.skipped_rows.items():
            ctx.say(f"[finetune] skipped {count} malformed row(s) of the {split_name} file")
        tokenizer = build_tokenizer(run_cfg.model_path)
        make_eval, make_stream = self._batching(backend)

        def encoded(split: Any) -> EvalSplit:
            split = split.take(run_cfg.eval_limit)
            features = text_pipeline.tokenize(split, tokenizer, run_cfg.max_seq_length)
            return make_eval(features, split.labels, 256), split.labels

        train_x = text_pipeline.tokenize(train, tokenizer, run_cfg.max_seq_length)
        data = TextData(
            task,
            tokenizer,
            encoded(task.validation),
            # MNLI: the mismatched split too (MNLI-mm), logged as val_mismatched_<metric>.
            {name: encoded(split) for name, split in task.extra_validation.items()},
            encoded(task.test) if task.test is not None else None,
        )

        def train_stream(start_step: int) -> Any:
            return make_stream(
                train_x,
                train.labels,
                ctx.per_worker_batch,
                run_cfg.epochs,
                run_cfg.seed,
                backend.rank,
                backend.size,
                start_step,
            )

        steps_per_epoch = (len(train) // backend.size) // ctx.per_worker_batch
        validation, val_labels = data.validation
        return Plan(
            train_stream,
            validation,
            steps_per_epoch,
            optimizer_config,
            f"task={task.name} train={len(train)} val={len(val_labels)} model={run_cfg.model}",
            data,
            tuple(task.metrics),
            self._perturbation_from(ctx.adversarial, steps_per_epoch),
        )

    @staticmethod
    def _batching(backend: Any) -> tuple[Any, Any]:
        """(evaluation batches, training stream) of the process's Keras backend:
        ``text_pipeline``'s NumPy ones on JAX (no TensorFlow; under a distribution each
        evaluation batch padded to the job's devices and split over its processes), its
        tf.data ones else."""
        import functools

        import keras

        from adv_large_batch.data import text_pipeline

        if keras.config.backend() == "jax":
            shard = {"rank": backend.rank, "size": backend.size, "multiple": backend.devices}
            if backend.distribution is None:
                shard = {}
            make_eval = functools.partial(text_pipeline.make_eval_batches, **shard)
            return make_eval, text_pipeline.make_epoch_batches
        return text_pipeline.make_eval_dataset, text_pipeline.make_epoch_stream

    @staticmethod
    def _perturbation_from(adv: ScaLAConfig, steps_per_epoch: int) -> str:
        from adv_large_batch.scala.injection import first_step_of_epoch

        if not adv.perturbs:
            return "never (--method baseline)"
        if adv.start_step is not None:
            return f"step {adv.start_step} (--adv-start-step)"
        step = first_step_of_epoch(adv.start_epoch, steps_per_epoch)
        return f"step {step} (epoch {max(adv.start_epoch, 1)}, counted from 1)"

    def headline(self, result: dict[str, Any]) -> str:
        extra = "".join(f"; {n} {m}" for n, m in result["validation_extra"].items())
        test = "" if result["test"] is None else f"; test {result['test']}"
        untrained = result["validation_untrained_head"]
        programs = result.get("compiled_train_programs")
        compiled = "" if programs is None else f"; {programs} compiled train-step program(s)"
        return (
            f"validation {result['validation']} (untrained head {untrained}){extra}{test}{compiled}"
        )

    def _warn_precision(self, ctx: Context) -> None:
        adv, precision = ctx.adversarial, ctx.run.precision
        if precision != "float32" and adv.perturbs and adv.eps < 1e-3:
            ctx.say(
                f"[finetune] warning: --adv-eps {adv.eps} is below the resolution of "
                f"{precision} activations: the perturbation is mostly rounded away "
                "(benchmarks/pga_step_scale.py measures it); use --precision float32 for "
                "ScaLA or a larger --adv-eps"
            )

    def build(self, ctx: Context, plan: Plan[TextData]) -> tuple[Any, Any, dict[str, Any]]:
        import keras

        from adv_large_batch.scala import ScaLA

        task, run_cfg = plan.data.task, ctx.run
        network = load_text_classifier(  # with its preprocessor: raw strings work too
            run_cfg.model_path,
            task.num_classes,
            sequence_length=run_cfg.max_seq_length,
            what="--model",
        )
        model = ScaLA(
            network,
            ctx.adversarial,
            micro_batch_size=run_cfg.micro_batch_size,
            backend=ctx.backend,
            seed=run_cfg.seed,
            steps_per_epoch=plan.steps_per_epoch,
        )
        if task.regression:
            return network, model, {"loss": keras.losses.MeanSquaredError(), "metrics": []}
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        # weighted: the padding rows of an evaluation batch split over devices weigh 0
        return network, model, {"loss": loss, "weighted_metrics": metrics}

    def metrics_of(
        self, plan: Plan[TextData], dataset: Any, labels: Any, model: Any
    ) -> dict[str, float]:
        from adv_large_batch.data import glue_metrics
        from adv_large_batch.engine.predict import predict_rows

        outputs = predict_rows(model.network, dataset)
        return glue_metrics.task_metrics(plan.data.task.metrics, labels, outputs)

    def before_fit(self, ctx: Context, plan: Plan[TextData], model: Any) -> None:
        plan.data.untrained_head = self.metrics_of(plan, *plan.data.validation, model)
        ctx.say(f"[finetune] untrained head on validation: {plan.data.untrained_head}")

    def callbacks(self, ctx: Context, plan: Plan[TextData], model: Any, start_step: int) -> list:
        from adv_large_batch.data import glue_metrics
        from adv_large_batch.engine.callbacks import EpochClock, EvaluateSplits

        data = plan.data

        def metrics_of(labels: Any, outputs: Any) -> dict[str, float]:
            return glue_metrics.task_metrics(data.task.metrics, labels, outputs)

        callbacks: list = [EpochClock()]
        splits = {log_prefix(n): (*split, metrics_of) for n, split in data.extra_validation.items()}
        if ctx.run.test_each_epoch and data.test is not None:
            splits["test"] = (*data.test, metrics_of)
        if splits:
            callbacks.append(EvaluateSplits(model.network, splits))
        return callbacks

    def evaluate(
        self, ctx: Context, plan: Plan[TextData], model: Any, timing: dict[str, Any]
    ) -> dict:
        import numpy as np

        data = plan.data
        task, (_, val_labels) = data.task, data.validation
        after = self.metrics_of(plan, *data.validation, model)
        test = data.test
        extra = {
            n: self.metrics_of(plan, *split, model) for n, split in data.extra_validation.items()
        }
        examples = timing["steps_run"] * ctx.run.batch_size
        wall = timing["wall_time_s"]
        majority = None
        if not task.regression:
            counts = np.bincount(val_labels, minlength=task.num_classes)
            majority = float(np.max(counts) / len(val_labels))
        return {
            "task": task.name,
            "validation": after,
            "test": None if test is None else self.metrics_of(plan, *test, model),
            "validation_untrained_head": data.untrained_head,
            # MNLI: {"validation_mismatched": metrics} (MNLI-mm; "validation" is MNLI-m).
            "validation_extra": extra,
            "majority_class_accuracy": majority,
            "examples_per_s": examples / wall if timing["steps_run"] else 0.0,
            # JAX: one XLA program per input shape (length bucket); TensorFlow: None
            "compiled_train_programs": getattr(model, "compiled_programs", None),
        }


def run(
    run_cfg: FinetuneConfig, adv: ScaLAConfig, optimizer_config: OptimizerConfig
) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the metrics dict (also written to --metrics-out).

    ``--precision`` sets Keras' global dtype policy for the run (restored after); the
    perturbation math (random start, ascent step, projection, regulariser) stays float32.
    """
    return run_training(FinetuneCommand(), run_cfg, adv, optimizer_config)


__all__ = ["FinetuneCommand", "FinetuneConfig", "TextData", "run", "validate_run"]
