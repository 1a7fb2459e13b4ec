"""The ``adv-large-batch sharpness`` command: a checkpoint's top Hessian eigenvalue.

Runs on the TensorFlow and the JAX backend; on JAX no TensorFlow is imported: the text
batch is tokenised in NumPy (``text_pipeline.tokenize``), the images are read by
``data/image_arrays.py`` (``imagenet2012``, read by tensorflow-datasets, is refused
before any work: ``backend_problem``), and the Hessian-vector products are JAX's
(``sharpness.network_hvp``).  Both backends start the power iteration from the same
NumPy vector, so they report the same eigenvalue for one checkpoint (to float32
rounding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from adv_large_batch.commands.common import precision_policy, write_json
from adv_large_batch.flags import ConfigError, cli_field, require
from adv_large_batch.sharpness import network_hvp, top_hessian_eigenvalue

#: Training commands whose checkpoints ``sharpness`` can rebuild.
COMMANDS = ("finetune", "train-images")


# ---- the command --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SharpnessConfig:
    """The flags of ``adv-large-batch sharpness``."""

    checkpoint: str | None = cli_field(
        None,
        "--checkpoint",
        "a run's --checkpoint-dir (its newest complete ckpt-<step> is used) or one "
        "ckpt-<step> folder",
    )
    batch_size: int = cli_field(
        128, "--batch-size", "training examples in the fixed batch the loss is computed on"
    )
    iterations: int = cli_field(
        20, "--iterations", "most power iterations (one Hessian-vector product each)"
    )
    tolerance: float = cli_field(
        1e-3,
        "--tolerance",
        "stop once the estimate changes by less than this fraction of itself (0: never)",
    )
    seed: int = cli_field(
        0, "--seed", "seed of the batch drawn from the training data and of the start vector"
    )
    data_limit: int | None = cli_field(
        None,
        "--data-limit",
        "draw the batch from the first N training examples (default: the run's --train-limit)",
    )
    json_out: str | None = cli_field(
        None,
        "--json-out",
        "write eigenvalue, iterations, history, checkpoint step, batch size and method as JSON",
    )

    def __post_init__(self) -> None:
        require(
            self.checkpoint is not None,
            "--checkpoint is required: a run's --checkpoint-dir or one of its ckpt-<step> folders",
        )
        require(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        require(self.iterations >= 1, f"--iterations must be >= 1, got {self.iterations}")
        require(self.tolerance >= 0, f"--tolerance must be >= 0, got {self.tolerance}")
        require(
            self.data_limit is None or self.data_limit >= 1,
            f"--data-limit must be >= 1, got {self.data_limit}",
        )


def locate(checkpoint: str) -> tuple[str, Any]:
    """(the ``ckpt-<step>`` folder, its ``checkpointing.RunMeta``) for ``--checkpoint``;
    ``ConfigError`` naming the path if unusable.

    Reads files only: every bad path is reported before a network is built.
    """
    from adv_large_batch.engine import checkpointing

    try:
        path = checkpointing.resolve_checkpoint(checkpoint)
        return path, checkpointing.run_meta(path, COMMANDS)
    except ConfigError as err:
        raise ConfigError(f"--checkpoint {checkpoint!r}: {err}") from None


def backend_problem(path: str, meta: Any, backend: str) -> str | None:
    """The message refusing checkpoint ``path`` (its ``RunMeta`` ``meta``) on the Keras
    backend ``backend``, or None: on JAX, a ``train-images`` run on a dataset that only
    tensorflow-datasets reads (``imagenet2012``; ``image_arrays.ARRAY_DATASETS`` load)."""
    from adv_large_batch.data.image_arrays import ARRAY_DATASETS

    dataset = meta.run.get("dataset")
    if backend != "jax" or meta.command != "train-images" or dataset in ARRAY_DATASETS:
        return None
    return (
        f"--checkpoint {path!r}: the run trained on --dataset {dataset}, which is read by "
        f"tensorflow-datasets and cannot be loaded on the JAX backend (KERAS_BACKEND=jax; "
        f"it loads {ARRAY_DATASETS}); run sharpness on this checkpoint with "
        "KERAS_BACKEND=tensorflow (or --backend tensorflow)"
    )


#: A run's flags that only its training uses: rebuilt at their defaults, so that the
#: checkpoint of a run whose training the process's backend could not run (``--strategy
#: horovod``, ``--precision mixed_float16`` on JAX) still loads.
TRAINING_ONLY = ("strategy", "precision", "logdir", "profile", "augment", "resume")


def _known_fields(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with only the fields ``cls`` has, ``TRAINING_ONLY`` at their
    defaults (JSON lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(TRAINING_ONLY)
    kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    return cls(**kept)


def batch_indices(num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """The examples of the fixed batch: the first ``batch_size`` of a seeded permutation."""
    require(
        batch_size <= num_examples,
        f"--batch-size {batch_size} is larger than the {num_examples} training examples",
    )
    return np.sort(np.random.default_rng([seed, 4]).permutation(num_examples)[:batch_size])


@dataclasses.dataclass
class Problem:
    """A network with its checkpoint's weights, one batch (NumPy) and the task loss on it."""

    network: Any
    inputs: Any
    labels: np.ndarray
    loss: Any
    description: str

    def loss_value(self) -> float:
        """The task loss on the batch, dropout off (a deterministic function of the weights)."""
        return float(self.loss(self.labels, self.network(self.inputs, training=False)))

    def hvp(self) -> Any:
        """``H v`` of that loss with respect to the network's trainable weights, compiled
        for this process's backend (``sharpness.network_hvp``)."""
        return network_hvp(self.network, self.loss, self.inputs, self.labels)


def _text_problem(meta: Any, cfg: SharpnessConfig) -> Problem:
    import keras

    from adv_large_batch.commands.finetune import FinetuneConfig
    from adv_large_batch.data import text_pipeline, text_tasks
    from adv_large_batch.models.text_classifiers import build_network

    run_cfg = _known_fields(FinetuneConfig, meta.run)
    task = text_tasks.load_task(run_cfg.task, run_cfg.data_source, run_cfg.data_dir)
    train = task.train.take(cfg.data_limit or run_cfg.train_limit)
    index = batch_indices(len(train), cfg.batch_size, cfg.seed)
    batch = text_tasks.TextSplit(
        [[col[i] for i in index] for col in train.texts], train.labels[index]
    )
    network, tokenizer = build_network(run_cfg.model_path, task.num_classes, run_cfg.seed)
    loss = (
        keras.losses.MeanSquaredError()
        if task.regression
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return Problem(
        network,
        text_pipeline.tokenize(batch, tokenizer, run_cfg.max_seq_length),
        np.asarray(batch.labels),
        loss,
        f"task={task.name} model={run_cfg.model} max_seq_length={run_cfg.max_seq_length} "
        f"batch {cfg.batch_size} of {len(train)} training examples",
    )


def _image_batch_tf(run_cfg: Any, cfg: SharpnessConfig) -> tuple[Any, np.ndarray, np.ndarray]:
    """(the dataset, ``[0, 1]`` float32 images, labels) of the fixed batch, read with
    tensorflow-datasets / tf.data (``image_datasets``)."""
    from adv_large_batch.data import image_datasets, image_pipeline

    data = image_datasets.load_image_dataset(
        run_cfg.dataset, run_cfg.data_dir, run_cfg.manual_dir, run_cfg.image_size
    ).limit(cfg.data_limit or run_cfg.train_limit, 1)
    arrays = image_pipeline.materialize(data.train, data.num_train, data.image_shape)
    index = batch_indices(data.num_train, cfg.batch_size, cfg.seed)  # (also the size check)
    if arrays is not None:
        images, labels = image_pipeline.to_unit_range(arrays[0][index]), arrays[1][index]
    else:  # too large to hold (ImageNet): the first examples, in order
        images, labels = next(
            iter(image_pipeline.eval_batches(data.train_for_eval(), cfg.batch_size))
        )
    return data, np.asarray(images), np.asarray(labels)


def _image_batch_arrays(run_cfg: Any, cfg: SharpnessConfig) -> tuple[Any, np.ndarray, np.ndarray]:
    """``_image_batch_tf`` without TensorFlow: the dataset as arrays (``image_arrays``)."""
    from adv_large_batch.data import image_arrays

    data = image_arrays.load_image_arrays(run_cfg.dataset, run_cfg.data_dir, run_cfg.image_size)
    data = data.limit(cfg.data_limit or run_cfg.train_limit, 1)
    index = batch_indices(data.num_train, cfg.batch_size, cfg.seed)
    images = data.train_images[index].astype(np.float32) / np.float32(255.0)
    return data, images, data.train_labels[index]


def _image_problem(meta: Any, cfg: SharpnessConfig) -> Problem:
    import keras

    from adv_large_batch.commands.train_images import ImageTrainConfig
    from adv_large_batch.conadv import ConAdvConfig
    from adv_large_batch.models.image_models import build_image_model

    run_cfg = _known_fields(ImageTrainConfig, meta.run)
    adv = _known_fields(ConAdvConfig, meta.adversarial)
    on_jax = keras.config.backend() == "jax"
    data, images, labels = (_image_batch_arrays if on_jax else _image_batch_tf)(run_cfg, cfg)
    keras.utils.set_random_seed(run_cfg.seed)
    network = build_image_model(
        run_cfg.model,
        data.image_shape,
        data.num_classes,
        split_bn=adv.adversarial,
        width=run_cfg.width,
    )
    return Problem(
        network,
        images,
        labels,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        f"dataset={data.name} model={run_cfg.model} batch {cfg.batch_size} of "
        f"{data.num_train} training images",
    )


def run(cfg: SharpnessConfig) -> dict[str, Any]:
    """Top Hessian eigenvalue of a checkpoint's training loss; also written to --json-out."""
    import keras

    from adv_large_batch.engine import checkpointing

    path, meta = locate(cfg.checkpoint)
    refusal = backend_problem(path, meta, keras.config.backend())
    if refusal is not None:
        raise ConfigError(refusal)
    with precision_policy("float32"):  # second derivatives in full precision
        build = _text_problem if meta.command == "finetune" else _image_problem
        problem = build(meta, cfg)
        weights = [v for v in problem.network.weights if keras.backend.is_float_dtype(v.dtype)]
        checkpointing.restore_variables(path, weights)  # not the seed-generator states
        shapes = [tuple(v.shape) for v in problem.network.trainable_variables]
        loss = problem.loss_value()
        found = top_hessian_eigenvalue(
            problem.hvp(), shapes, cfg.iterations, cfg.tolerance, cfg.seed
        )
    method = meta.adversarial.get("method")
    result = {
        **found,
        "checkpoint": path,
        "checkpoint_step": meta.global_step,
        "command": meta.command,
        "method": method,
        "backend": keras.config.backend(),
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "tolerance": cfg.tolerance,
        "loss": loss,
        "num_weights": int(sum(np.prod(s) for s in shapes)),
    }
    state = "converged" if found["converged"] else f"not converged to {cfg.tolerance:g}"
    print(
        f"[sharpness] {meta.command} method={method} {path} (step {meta.global_step}), "
        f"{problem.description}, loss {loss:.6g}"
    )
    print(
        f"[sharpness] top Hessian eigenvalue {found['eigenvalue']:.6g} after "
        f"{found['iterations']} power iterations ({state})"
    )
    write_json(cfg.json_out, result)
    return result
