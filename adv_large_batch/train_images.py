"""The image run behind ``adv-large-batch train-images``, top to bottom.

ConAdv §4 (ResNet / EfficientNet, LARS, 1-step PGD, split BN, optional
AutoAugment-style augmentation):

config -> backend -> dataset -> tf.data (shuffle, augment, batch[, pair t / t+tau])
       -> image model (split BN unless baseline) -> LARS -> ConAdv trainer
       -> callbacks -> fit -> test top-1 -> metrics JSON

Every value is validated (``ImageTrainConfig``, ``ConAdvConfig``,
``OptimizerConfig``) before TensorFlow builds anything; the input size is
checked against the model before training.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import keras

from adv_large_batch.augment import POLICIES
from adv_large_batch.conadv import ConAdvConfig
from adv_large_batch.config import ConfigError, cli_field, require
from adv_large_batch.image_data import DATASETS
from adv_large_batch.models.resnet import IMAGE_MODELS, check_input_shape
from adv_large_batch.optimizers import DEFAULT_NO_DECAY_PATTERNS, OptimizerConfig
from adv_large_batch.run_config import RunConfig, split_batch

DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

# keras.applications names its BNs "*_bn": exempt their gamma/beta like "*norm*/gamma".
_KERAS_APPLICATIONS_BN = r"(^|_)bn/(gamma|beta)$"
#: The image runs' optimizer: LARS (ConAdv §4.1) with momentum 0.9, the learning
#: rate tuned at batch 256 and scaled linearly (Goyal et al.), polynomial (power 2)
#: decay after warm-up as in MLPerf's LARS ResNet-50.  These are the
#: ``train-images`` defaults of ``OptimizerConfig``'s flags (one declaration).
IMAGE_OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "optimizer": "lars",
    "lr": 5.0,
    "lr_scaling": "linear",
    "base_batch_size": 256,
    "weight_decay": 5e-5,
    "schedule": "warmup_poly",
    "poly_power": 2.0,
    "no_decay_pattern": (*DEFAULT_NO_DECAY_PATTERNS, _KERAS_APPLICATIONS_BN),
    "no_adapt_pattern": (*DEFAULT_NO_DECAY_PATTERNS, _KERAS_APPLICATIONS_BN),
}


def image_optimizer_config(**overrides: Any) -> OptimizerConfig:
    """``OptimizerConfig`` with the image defaults (LARS), then ``overrides``."""
    return dataclasses.replace(OptimizerConfig(), **{**IMAGE_OPTIMIZER_DEFAULTS, **overrides})


@dataclasses.dataclass(frozen=True)
class ImageTrainConfig(RunConfig):
    """Data, model and augmentation knobs of an image run (plus ``RunConfig``)."""

    dataset: str = cli_field("fashion_mnist", "--dataset", "image dataset", DATASETS)
    data_dir: str | None = cli_field(
        None,
        "--data-dir",
        "fashion_mnist: folder of the *-ubyte.gz files; cifar10/imagenet2012: tfds data_dir; "
        "folder: the folder of class subfolders",
    )
    manual_dir: str | None = cli_field(
        None, "--manual-dir", "imagenet2012: folder of the ILSVRC2012 tarballs to prepare from"
    )
    image_size: int | None = cli_field(
        None, "--image-size", "resize images to SIZE x SIZE (imagenet2012: 224 by default)"
    )
    model: str = cli_field("cifar_resnet20", "--model", "image model", IMAGE_MODELS)
    width: int = cli_field(16, "--width", "base width of the cifar_resnet* models")
    augment: str = cli_field("flip_crop", "--augment", "augmentation policy", POLICIES)
    batch_size: int = cli_field(256, "--batch-size", "global batch size (all workers)")
    epochs: int = cli_field(2, "--epochs", "training epochs")
    warmup_epochs: float | None = cli_field(
        None, "--warmup-epochs", "learning-rate warm-up in epochs (overrides --warmup-ratio)"
    )
    dtype_policy: str = cli_field(
        "float32", "--dtype-policy", "Keras dtype policy (mixed precision)", DTYPE_POLICIES
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.width >= 1, f"--width must be >= 1, got {self.width}")
        require(
            self.image_size is None or self.image_size >= 1,
            f"--image-size must be >= 1, got {self.image_size}",
        )
        require(
            self.warmup_epochs is None or self.warmup_epochs >= 0,
            f"--warmup-epochs must be >= 0, got {self.warmup_epochs}",
        )
        require(
            self.dataset != "folder" or self.data_dir is not None,
            "--dataset folder needs --data-dir <folder of class subfolders>",
        )


def run(run_cfg: ImageTrainConfig, adv: ConAdvConfig, opt: OptimizerConfig) -> dict[str, Any]:
    """Train and evaluate; returns the metrics dict (also written to --metrics-out)."""
    from adv_large_batch import distributed, image_data

    backend = distributed.get_backend(run_cfg.strategy)
    per_worker_batch = split_batch(run_cfg, backend.size, backend.num_replicas_in_sync)[0]
    say = print if backend.is_chief and run_cfg.verbose else (lambda *a, **k: None)

    data = image_data.load_image_dataset(
        run_cfg.dataset, run_cfg.data_dir, run_cfg.manual_dir, run_cfg.image_size
    ).limit(run_cfg.train_limit, run_cfg.eval_limit)
    try:
        check_input_shape(run_cfg.model, data.image_shape)
    except ConfigError as err:
        hint = "" if run_cfg.image_size else " (or resize them with --image-size)"
        raise ConfigError(f"{err}{hint}") from None
    steps_per_epoch = (data.num_train // backend.size) // per_worker_batch
    require(
        steps_per_epoch >= 1,
        f"--batch-size {run_cfg.batch_size} is larger than the {data.num_train} training "
        "images: not one full step per epoch",
    )
    if run_cfg.warmup_epochs is not None:
        warmup = round(run_cfg.warmup_epochs * steps_per_epoch)
        opt = dataclasses.replace(opt, warmup_steps=min(steps_per_epoch * run_cfg.epochs, warmup))

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(run_cfg.dtype_policy)
    try:
        return _train(run_cfg, adv, opt, backend, data, per_worker_batch, steps_per_epoch, say)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(
    run_cfg: ImageTrainConfig,
    adv: ConAdvConfig,
    opt: OptimizerConfig,
    backend: Any,
    data: Any,
    per_worker_batch: int,
    steps_per_epoch: int,
    say: Any,
) -> dict[str, Any]:
    from adv_large_batch import image_data
    from adv_large_batch.augment import build_augmenter
    from adv_large_batch.conadv import ConAdv, pair_with_future
    from adv_large_batch.models.resnet import build_image_model
    from adv_large_batch.optimizers import build_optimizer
    from adv_large_batch.training_callbacks import standard_callbacks

    total_steps = steps_per_epoch * run_cfg.epochs
    keras.utils.set_random_seed(run_cfg.seed)
    augment = build_augmenter(run_cfg.augment, data.image_shape, run_cfg.seed)
    train_ds = image_data.train_batches(
        data.train, per_worker_batch, run_cfg.seed, augment, backend.shard
    )
    if adv.buffered:
        train_ds = pair_with_future(train_ds, adv.staleness)
    test_ds = image_data.eval_batches(data.test, max(per_worker_batch, 256))

    replica_batch = per_worker_batch // backend.num_replicas_in_sync
    with backend.scope():
        network = build_image_model(
            run_cfg.model,
            data.image_shape,
            data.num_classes,
            split_bn=adv.adversarial,
            width=run_cfg.width,
        )
        optimizer = build_optimizer(
            opt, total_steps=total_steps, global_batch_size=run_cfg.batch_size
        )
        model = ConAdv(
            network,
            adv,
            micro_batch_size=run_cfg.micro_batch_size,
            backend=backend,
            seed=run_cfg.seed,
            batch_size=replica_batch if adv.buffered else None,
        )
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            jit_compile=backend.jit_compile,
        )

    say(
        f"[train-images] dataset={data.name} train={data.num_train} test={data.num_test} "
        f"image={'x'.join(map(str, data.image_shape))} model={run_cfg.model} "
        f"({network.count_params():,} weights) workers={backend.size} batch={run_cfg.batch_size} "
        f"(per worker {per_worker_batch}, micro {run_cfg.micro_batch_size or per_worker_batch}) "
        f"steps/epoch={steps_per_epoch} method={adv.method} eps={adv.eps}px "
        f"step={adv.step_size if adv.step_size is not None else adv.eps}px "
        f"staleness={adv.staleness} augment={run_cfg.augment} optimizer={opt.optimizer} "
        f"base lr={opt.lr} ({opt.lr_scaling} scaling from {opt.base_batch_size})"
    )
    callbacks = standard_callbacks(
        backend, run_cfg.logdir, run_cfg.checkpoint_dir, global_batch_size=run_cfg.batch_size
    )
    timer = _StepTimer()
    callbacks.append(timer)
    start = time.time()
    history = model.fit(
        train_ds,
        epochs=run_cfg.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=test_ds,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=run_cfg.verbose if backend.is_chief else 0,
    )
    wall = time.time() - start
    evaluation = model.evaluate(test_ds, verbose=0, return_dict=True)
    images = total_steps * run_cfg.batch_size
    logs = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    last_epoch = timer.epoch_seconds[-1]
    result = {
        "dataset": data.name,
        "model": run_cfg.model,
        "method": adv.method,
        "top1": float(evaluation["accuracy"]),
        "test_loss": float(evaluation["loss"]),
        "wall_time_s": wall,
        "steps": total_steps,
        # Training steps of the last epoch only: no tracing, no validation.
        "images_per_s": steps_per_epoch * run_cfg.batch_size / last_epoch,
        "images_per_s_overall": images / wall,
        "history": logs,
        "config": {
            "run": dataclasses.asdict(run_cfg),
            "adversarial": dataclasses.asdict(adv),
            "optimizer": dataclasses.asdict(opt),
            "workers": backend.size,
            "backend": backend.name,
        },
    }
    say(
        f"[train-images] test top-1 {result['top1']:.4f}; fit {wall:.1f}s; "
        f"{result['images_per_s']:.1f} images/s (training steps of the last epoch), "
        f"{result['images_per_s_overall']:.1f} images/s overall (with tracing and validation)"
    )
    if run_cfg.metrics_out and backend.is_chief:
        os.makedirs(os.path.dirname(os.path.abspath(run_cfg.metrics_out)), exist_ok=True)
        with open(run_cfg.metrics_out, "w") as f:
            json.dump(result, f, indent=2)
    return result


class _StepTimer(keras.callbacks.Callback):
    """Seconds spent in training steps per epoch (validation and callbacks excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_seconds.append(0.0)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.epoch_seconds[-1] += time.perf_counter() - self._start


__all__ = [
    "IMAGE_OPTIMIZER_DEFAULTS",
    "ImageTrainConfig",
    "image_optimizer_config",
    "run",
]
