"""The image run behind ``adv-large-batch train-images``, top to bottom.

ConAdv §4 (ResNet / EfficientNet, LARS, 1-step PGD, split BN, optional
AutoAugment-style augmentation):

config -> backend -> dataset -> tf.data (shuffle, augment, batch[, pair t / t+tau])
       -> image model (split BN unless baseline) -> LARS -> ConAdv trainer
       -> [restore checkpoint] -> callbacks -> fit from the step -> test top-1 -> metrics JSON

Exact resume (``--checkpoint-dir``, ``--checkpoint-every``, ``--resume``,
``--stop-at-step``): ``image_pipeline.train_stream`` is a pure function of (seed,
epoch, example) that starts at any global step, ``pair_with_future`` re-pairs it
from there, and the checkpoint holds weights, optimizer, BN statistics and
ConAdv's buffer of in-flight adversarial batches and its step counter.

Every value is validated (``ImageTrainConfig``, ``ConAdvConfig``,
``OptimizerConfig``) before TensorFlow builds anything; the input size is
checked against the model before training.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import keras

from adv_large_batch.commands.common import Context, Plan, run_training
from adv_large_batch.commands.run_config import RunConfig
from adv_large_batch.conadv import ConAdvConfig
from adv_large_batch.conadv.buffers import WorkerBuffers
from adv_large_batch.data.image_names import DATASETS, POLICIES
from adv_large_batch.engine.losses import smoothed_cross_entropy
from adv_large_batch.flags import ConfigError, cli_field, require
from adv_large_batch.models.image_models import IMAGE_MODELS, check_input_shape
from adv_large_batch.optimizers import OptimizerConfig, resolve_recipe

# The optimizer flags' image defaults (LARS and its published recipe) are
# ``optimizers.recipes.IMAGE_OPTIMIZER_DEFAULTS``; ``resolve_recipe`` fills the recipe in.


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
        None,
        "--image-size",
        "model resolution SIZE x SIZE; imagenet2012 and folder train on Inception crops "
        "of the full images and test on center crops (default: the model's, resnet*/"
        "efficientnet_b0 224, efficientnet_b2 260; cifar_resnet* keep the native size), "
        "fashion_mnist/cifar10 resize both splits",
    )
    model: str = cli_field("cifar_resnet20", "--model", "image model", IMAGE_MODELS)
    width: int = cli_field(16, "--width", "base width of the cifar_resnet* models")
    augment: str = cli_field("flip_crop", "--augment", "augmentation policy", POLICIES)
    batch_size: int = cli_field(256, "--batch-size", "global batch size (all workers)")
    epochs: int = cli_field(2, "--epochs", "training epochs")
    warmup_epochs: float | None = cli_field(
        None,
        "--warmup-epochs",
        "learning-rate warm-up in epochs (overrides --warmup-ratio; default without --lr: the "
        "LARS recipe's, max(5, batch / 2400) epochs, at most half the run)",
    )
    label_smoothing: float = cli_field(
        0.1, "--label-smoothing", "label smoothing of the cross-entropy (the LARS recipes: 0.1)"
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
            0 <= self.label_smoothing < 1,
            f"--label-smoothing must be in [0, 1), got {self.label_smoothing}",
        )
        require(
            self.dataset != "folder" or self.data_dir is not None,
            "--dataset folder needs --data-dir <folder of class subfolders>",
        )


@dataclasses.dataclass(frozen=True)
class ImageData:
    """The image half of a training plan (``Plan.data``)."""

    dataset: Any  # the loaded ImageSplits: splits, image shape, classes, skipped files
    timer: _StepTimer  # the training steps' own time, for the last epoch's img/s


class TrainImagesCommand:
    """``adv-large-batch train-images``: the image parts of the run skeleton (``common``)."""

    name = "train-images"
    unit = "img/s"

    def prepare(self, ctx: Context, optimizer_config: OptimizerConfig) -> Plan[ImageData]:
        """Dataset (at the model's resolution) -> the resumable, augmented stream (paired
        t / t + tau for ConAdv), the test batches, and the LARS recipe for the batch
        (tf.data on TensorFlow; NumPy arrays and batches on JAX: ``_prepare_arrays``)."""
        if keras.config.backend() == "jax":
            return self._prepare_arrays(ctx, optimizer_config)
        from adv_large_batch.conadv import pair_with_future
        from adv_large_batch.data import image_pipeline

        run_cfg, backend, adv = ctx.run, ctx.backend, ctx.adversarial
        data = load_data(run_cfg)
        steps_per_epoch = _steps_per_epoch(ctx, data.num_train)
        augment = image_pipeline.seeded_augmenter(run_cfg.augment, data.image_shape, run_cfg.seed)
        arrays = image_pipeline.materialize(data.train, data.num_train, data.image_shape)

        def train_stream(start_step: int) -> Any:
            """Batches from global step ``start_step`` on (paired t / t + tau for ConAdv):
            resumed at step g, step g gets the pair (g, g + tau) of the uninterrupted run."""
            stream = image_pipeline.train_stream(
                data.train,
                data.num_train,
                ctx.per_worker_batch,
                run_cfg.seed,
                augment,
                backend.rank,
                backend.size,
                start_step,
                arrays,
            )
            return pair_with_future(stream, adv.staleness) if adv.buffered else stream

        _say_data_notes(ctx, data, arrays)
        test = image_pipeline.eval_batches(data.test, max(ctx.per_worker_batch, 256))
        return Plan(
            train_stream,
            test,
            steps_per_epoch,
            resolve_recipe(optimizer_config, run_cfg, steps_per_epoch),
            _summary(data, run_cfg, adv),
            ImageData(data, _StepTimer()),
            ("accuracy",),
            self._adversarial_from(adv),
        )

    def _prepare_arrays(self, ctx: Context, optimizer_config: OptimizerConfig) -> Plan[ImageData]:
        """``prepare`` without TensorFlow: the dataset as arrays (``image_arrays``), the
        stream and the test batches in NumPy (``numpy_images``: the same layout, seeded
        and resumable, not the same draws as tf.data); every process feeds its slice."""
        from adv_large_batch.data import numpy_images

        run_cfg, backend, adv = ctx.run, ctx.backend, ctx.adversarial
        data = load_arrays(run_cfg)
        steps_per_epoch = _steps_per_epoch(ctx, data.num_train)
        augment = numpy_images.numpy_augmenter(run_cfg.augment)

        def train_stream(start_step: int) -> Any:
            return numpy_images.image_batches(
                data.train_images, data.train_labels, ctx.per_worker_batch, run_cfg.seed,
                backend.rank, backend.size, start_step, augment,
                adv.staleness if adv.buffered else 0,
            )  # fmt: skip

        if data.skipped:
            ctx.say(f"[train-images] {data.skipped_line()}")
        per_process = max(ctx.per_worker_batch, 256)
        test = numpy_images.eval_image_batches(
            data.test_images, data.test_labels, per_process * backend.size,
            backend.rank, backend.size, getattr(backend, "devices", 1),
        )  # fmt: skip
        return Plan(
            train_stream,
            _Batches(test),
            steps_per_epoch,
            resolve_recipe(optimizer_config, run_cfg, steps_per_epoch),
            _summary(data, run_cfg, adv),
            ImageData(data, _StepTimer()),
            ("accuracy",),
            self._adversarial_from(adv),
        )

    @staticmethod
    def _adversarial_from(adv: ConAdvConfig) -> str:
        if not adv.adversarial:
            return "never (--method baseline)"
        if not adv.buffered:
            return "step 0 (DisAdv: every step attacks its own batch first)"
        return (
            f"step 0; steps 0..{adv.staleness - 1} attack their own batch (DisAdv), later steps "
            f"train on the examples made {adv.staleness} step(s) earlier ({adv.attack_pass})"
        )

    def headline(self, result: dict[str, Any]) -> str:
        return (
            f"test top-1 {result['top1']:.4f}, test loss {result['test_loss']:.4f} "
            f"({result['images_per_s']:.1f} img/s in the last epoch's steps)"
        )

    def build(self, ctx: Context, plan: Plan[ImageData]) -> tuple[Any, Any, dict[str, Any]]:
        import keras

        from adv_large_batch.conadv import ConAdv
        from adv_large_batch.models.image_models import build_image_model

        run_cfg, adv, data = ctx.run, ctx.adversarial, plan.data.dataset
        network = build_image_model(
            run_cfg.model, data.image_shape, data.num_classes, split_bn=adv.adversarial,
            width=run_cfg.width,
        )  # fmt: skip
        replica_batch = ctx.per_worker_batch // ctx.backend.num_replicas_in_sync
        model = ConAdv(
            network,
            adv,
            micro_batch_size=run_cfg.micro_batch_size,
            backend=ctx.backend,
            seed=run_cfg.seed,
            batch_size=replica_batch if adv.buffered else None,
        )
        return network, model, {
            "loss": smoothed_cross_entropy(data.num_classes, run_cfg.label_smoothing),
            # weighted: the padding rows of a test batch split over devices weigh 0
            "weighted_metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        }  # fmt: skip

    def before_fit(self, ctx: Context, plan: Plan[ImageData], model: Any) -> None:
        ctx.say(f"[train-images] {model.network.count_params():,} weights")

    def callbacks(self, ctx: Context, plan: Plan[ImageData], model: Any, start_step: int) -> list:
        from adv_large_batch.engine.callbacks import EpochClock

        run_cfg, backend = ctx.run, ctx.backend
        callbacks: list = [EpochClock(), plan.data.timer]
        several = backend.size * backend.num_replicas_in_sync > 1
        if ctx.adversarial.buffered and several and keras.config.backend() != "jax":
            # (on JAX the buffer is one array sharded over the devices, in the checkpoint)
            buffers = WorkerBuffers(
                model.per_worker_variables(),
                run_cfg.checkpoint_dir,
                run_cfg.checkpoint_every or plan.steps_per_epoch,
                backend.rank,
            )
            if start_step and not buffers.load(start_step):
                print(
                    f"[train-images] rank {backend.rank}: no saved adversarial buffer for step "
                    f"{start_step} in {buffers.folder}; using the checkpoint's (rank 0, replica "
                    "0; its images keep their own labels, but the run is no longer bit-exact)",
                    flush=True,
                )
            callbacks.append(buffers)
        return callbacks

    def evaluate(
        self, ctx: Context, plan: Plan[ImageData], model: Any, timing: dict[str, Any]
    ) -> dict:
        evaluation = model.evaluate(plan.validation, verbose=0, return_dict=True)
        batch, wall = ctx.run.batch_size, timing["wall_time_s"]
        last_steps, last_seconds = plan.data.timer.last_epoch()
        result = {
            "dataset": plan.data.dataset.name,
            "model": ctx.run.model,
            "method": ctx.adversarial.method,
            "top1": float(evaluation["accuracy"]),
            "test_loss": float(evaluation["loss"]),
            # Training steps of the last epoch only: no tracing, no validation.
            "images_per_s": last_steps * batch / last_seconds if last_steps else 0.0,
            "images_per_s_overall": timing["steps_run"] * batch / wall
            if timing["steps_run"]
            else 0.0,
            "skipped_files": _skipped_files(plan.data.dataset),
        }
        return result


def _steps_per_epoch(ctx: Context, num_train: int) -> int:
    """Full global steps in an epoch of ``num_train`` images; ``ConfigError`` if none."""
    steps = (num_train // ctx.backend.size) // ctx.per_worker_batch
    require(
        steps >= 1,
        f"--batch-size {ctx.run.batch_size} is larger than the {num_train} training images: "
        "not one full step per epoch",
    )
    return steps


def _say_data_notes(ctx: Context, data: Any, arrays: Any) -> None:
    """What the run's first lines say about its images: damaged or stray files left out,
    training images streamed rather than held, augmentations a resume cannot repeat."""
    from adv_large_batch.data import image_pipeline

    run_cfg = ctx.run
    skipped = data.skipped_files.line() if data.skipped_files else None
    if skipped:  # damaged and stray files of an image folder; also in --metrics-out
        ctx.say(f"[train-images] {skipped}")
    if arrays is None and not image_pipeline.random_access(data.train):
        ctx.say(
            f"[train-images] {data.num_train} training images are streamed from record "
            "files: each worker shuffles its own shard in a window (exact resume needs the "
            "same worker count)"
        )
    if run_cfg.augment not in image_pipeline.SEEDED_POLICIES and (
        run_cfg.checkpoint_dir or run_cfg.resume
    ):
        ctx.say(
            f"[train-images] note: --augment {run_cfg.augment} draws from Keras' stateful "
            "generators, so a resumed run's augmentations differ from an uninterrupted "
            f"run's (exact resume: --augment {' or '.join(image_pipeline.SEEDED_POLICIES)})"
        )


def _summary(data: Any, run_cfg: ImageTrainConfig, adv: ConAdvConfig) -> str:
    """The data half of the run's first line."""
    return (
        f"dataset={data.name} train={data.num_train} test={data.num_test} "
        f"image={'x'.join(map(str, data.image_shape))} model={run_cfg.model} "
        f"eps={adv.eps}px step={adv.step_size if adv.step_size is not None else adv.eps}px "
        f"staleness={adv.staleness} augment={run_cfg.augment}"
    )


def _skipped_files(data: Any) -> dict[str, Any]:
    """The metrics' ``skipped_files``: an image folder's files left out (or substituted)."""
    if hasattr(data, "skipped"):  # image_arrays.ImageArrays (JAX): nothing is substituted
        by_kind: dict[str, int] = {}
        for _, kind, _ in data.skipped:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        examples = [list(file) for file in data.skipped[:5]]
        nothing: dict[str, Any] = {"count": 0, "examples": []}
        return {"count": len(data.skipped), "by_kind": by_kind, "examples": examples,
                "substituted": nothing}  # fmt: skip
    if data.skipped_files is None:
        from adv_large_batch.data.image_splits import SkippedFiles

        return SkippedFiles().summary()  # nothing skipped, the same keys
    return data.skipped_files.summary()


def load_data(run_cfg: ImageTrainConfig) -> Any:
    """The dataset of the run at the model's resolution (``--image-size`` unset: ResNet 224,
    EfficientNet-B2 260 on ImageNet-scale data), checked against the model."""
    from adv_large_batch.data import image_datasets
    from adv_large_batch.data.image_names import resolve_image_size

    hint = "" if run_cfg.image_size else " (or resize them with --image-size)"
    image_size = resolve_image_size(run_cfg.dataset, run_cfg.model, run_cfg.image_size)
    data = image_datasets.load_image_dataset(
        run_cfg.dataset, run_cfg.data_dir, run_cfg.manual_dir, image_size
    ).limit(run_cfg.train_limit, run_cfg.eval_limit)
    try:
        check_input_shape(run_cfg.model, data.image_shape)
    except ConfigError as err:
        raise ConfigError(f"{err}{hint}") from None
    return data


def load_arrays(run_cfg: ImageTrainConfig) -> Any:
    """``load_data`` without TensorFlow: the dataset as NumPy arrays (``image_arrays``)."""
    from adv_large_batch.data import image_arrays

    data = image_arrays.load_image_arrays(run_cfg.dataset, run_cfg.data_dir, run_cfg.image_size)
    data = data.limit(run_cfg.train_limit, run_cfg.eval_limit)
    check_input_shape(run_cfg.model, data.image_shape)
    return data


class _Batches(keras.utils.PyDataset):
    """A sequence of batches as Keras reads it (``evaluate``, ``predict``), every epoch."""

    def __init__(self, batches: Any) -> None:
        super().__init__()
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Any:
        return self.batches[index]


def run(
    run_cfg: ImageTrainConfig, adv: ConAdvConfig, optimizer_config: OptimizerConfig
) -> dict[str, Any]:
    """Train and evaluate; returns the metrics dict (also written to --metrics-out).

    ``--image-size`` unset is resolved to the model's resolution first, so the metrics and
    the checkpoints' meta.json record it (``sharpness`` rebuilds at that size)."""
    from adv_large_batch.data.image_names import resolve_image_size

    image_size = resolve_image_size(run_cfg.dataset, run_cfg.model, run_cfg.image_size)
    run_cfg = dataclasses.replace(run_cfg, image_size=image_size)
    return run_training(TrainImagesCommand(), run_cfg, adv, optimizer_config)


class _StepTimer(keras.callbacks.Callback):
    """Steps and seconds spent in training steps per epoch (validation and callbacks excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_seconds: list[float] = []
        self.epoch_steps: list[int] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_seconds.append(0.0)
        self.epoch_steps.append(0)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.epoch_seconds[-1] += time.perf_counter() - self._start
        self.epoch_steps[-1] += 1

    def last_epoch(self) -> tuple[int, float]:
        """(steps, seconds) of the last epoch that ran a step; (0, 0.0) if none did."""
        for steps, seconds in zip(reversed(self.epoch_steps), reversed(self.epoch_seconds)):
            if steps:
                return steps, seconds
        return 0, 0.0


__all__ = ["ImageData", "ImageTrainConfig", "TrainImagesCommand", "run"]
