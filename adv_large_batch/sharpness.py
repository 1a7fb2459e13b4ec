"""Sharpness of a trained model: the top eigenvalue of the training loss's Hessian.

ScaLA (``shared/papers/scala.md``, figure 4c) compares the sharpness of the
minima that small-batch, large-batch and ScaLA training reach: the largest
eigenvalue of the Hessian of the training loss with respect to the trainable
weights, on one fixed batch of training data.  It is found by power iteration
on Hessian-vector products, which never form the Hessian:

    v_0  = random unit vector (seeded)
    H v  = d/dw (grad_w L(w) . v)             double backprop, one tf.function
    l_k  = v_k . H v_k                        Rayleigh quotient (v_k has unit norm)
    v_k+1 = H v_k / |H v_k|                   until |l_k - l_k-1| < tolerance |l_k|

Power iteration finds the eigenvalue of largest magnitude; near a minimum the
Hessian is close to positive semi-definite, so that is the top one.

The math is two pure functions (``hessian_vector_product``,
``top_hessian_eigenvalue``); ``run`` is the ``adv-large-batch sharpness``
plumbing: resolve the checkpoint, rebuild the network and the run's training
data from its ``meta.json``, restore the network's weights from ``state.npz``
by variable path, and evaluate the plain task loss (cross-entropy, MSE for
regression; no perturbation) with dropout off (``training=False``) in float32,
so the loss is a deterministic function of the weights.

Example (the command line):

```bash
.venv/bin/adv-large-batch finetune --checkpoint-dir runs/ft/ckpt ...   # any finished run
.venv/bin/adv-large-batch sharpness --checkpoint runs/ft/ckpt --batch-size 128 \\
    --iterations 20 --json-out runs/ft/sharpness.json
# [sharpness] top Hessian eigenvalue <value> after <k> power iterations (converged)
```

From Python, on any loss:

```python
net = keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
loss_fn = lambda: keras.ops.mean((net(x, training=False)[:, 0] - y) ** 2)  # a scalar
found = top_hessian_eigenvalue(loss_fn, net.trainable_variables, iterations=50)
print(found["eigenvalue"], found["iterations"], found["history"])
```
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from adv_large_batch.config import ConfigError, cli_field, require

#: Training commands whose checkpoints ``sharpness`` can rebuild.
COMMANDS = ("finetune", "train-images")

LossFn = Callable[[], tf.Tensor]


# ---- the math -------------------------------------------------------------------------------
def hessian_vector_product(
    loss_fn: LossFn, variables: Sequence[Any], vector: Sequence[tf.Tensor]
) -> list[tf.Tensor]:
    """``H v``: the Hessian of ``loss_fn()`` with respect to ``variables`` times ``vector``.

    Double backprop: the gradient of ``grad(loss) . v`` (``v`` held constant) is
    ``H v``.  ``vector`` has one tensor per variable, of its shape; a variable the
    loss does not reach gets zeros.  Works eagerly and inside ``tf.function``
    (``make_hvp`` compiles it once).
    """
    variables = list(variables)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn()
        grads = _dense(inner.gradient(loss, variables), variables)
        dot = tf.add_n(
            [
                tf.reduce_sum(g * tf.stop_gradient(tf.cast(v, g.dtype)))
                for g, v in zip(grads, vector)
            ]
        )
    return _dense(outer.gradient(dot, variables), variables)


def _dense(grads: Sequence[Any], variables: Sequence[Any]) -> list[tf.Tensor]:
    """Gradients as dense tensors: zeros for an unconnected variable (e.g. the auxiliary BN
    with ``training=False``), embedding lookups' ``IndexedSlices`` densified."""
    return [
        tf.zeros(tuple(v.shape), v.dtype) if g is None else tf.convert_to_tensor(g)
        for g, v in zip(grads, variables)
    ]


def make_hvp(
    loss_fn: LossFn, variables: Sequence[Any]
) -> Callable[[Sequence[tf.Tensor]], list[tf.Tensor]]:
    """``hessian_vector_product`` of a fixed loss and variables as one ``tf.function``."""
    variables = list(variables)
    return tf.function(lambda vector: hessian_vector_product(loss_fn, variables, vector))


def _dot(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> float:
    """Inner product of two vectors (lists of tensors), accumulated in float64."""
    return float(
        sum(
            tf.reduce_sum(tf.cast(x, tf.float64) * tf.cast(y, tf.float64)).numpy()
            for x, y in zip(a, b)
        )
    )


def top_hessian_eigenvalue(
    loss_fn: LossFn,
    variables: Sequence[Any],
    iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """The Hessian's eigenvalue of largest magnitude, by power iteration.

    Starts from a seeded Gaussian unit vector; each iteration is one
    Hessian-vector product ``H v``, the estimate is the Rayleigh quotient
    ``v . H v`` and the next ``v`` is ``H v / |H v|``.  Stops after ``iterations``
    products, or once the estimate changes by less than ``tolerance`` relative to
    itself (``tolerance=0``: always ``iterations``).

    Returns ``{"eigenvalue", "iterations", "history", "converged"}``: the last
    estimate, how many products were computed, every estimate, and whether the
    tolerance was met (or ``H v`` was exactly zero).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    variables = list(variables)
    hvp = make_hvp(loss_fn, variables)
    rng = np.random.default_rng(seed)
    v = [tf.constant(rng.standard_normal(tuple(var.shape)), dtype=var.dtype) for var in variables]
    norm = np.sqrt(_dot(v, v))
    v = [x / tf.cast(norm, x.dtype) for x in v]
    history: list[float] = []
    converged = False
    for _ in range(iterations):
        hv = hvp(v)
        history.append(_dot(v, hv))
        norm = np.sqrt(_dot(hv, hv))
        if norm == 0.0:  # v is in the null space: H v = 0 v
            converged = True
            break
        if len(history) > 1 and abs(history[-1] - history[-2]) < tolerance * abs(history[-1]):
            converged = True
            break
        v = [x / tf.cast(norm, x.dtype) for x in hv]
    return {
        "eigenvalue": history[-1],
        "iterations": len(history),
        "history": history,
        "converged": converged,
    }


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


def locate(checkpoint: str) -> tuple[str, dict[str, Any]]:
    """(the ``ckpt-<step>`` folder, its meta) for ``--checkpoint``; ``ConfigError`` if unusable.

    Reads files only: every bad path is reported before TensorFlow builds anything.
    """
    from adv_large_batch import checkpointing

    try:
        path = checkpointing.resolve_checkpoint(checkpoint)
    except ConfigError as err:
        raise ConfigError(f"--checkpoint {checkpoint!r}: {err}") from None
    meta = checkpointing.read_meta(path)
    missing = [k for k in ("command", "config", "adversarial", "paths") if k not in meta]
    require(
        not missing,
        f"--checkpoint {checkpoint!r}: {path}/meta.json has no {', '.join(missing)}: it was "
        "written before `sharpness` existed; train (or resume) with this version to record them",
    )
    require(
        meta["command"] in COMMANDS,
        f"--checkpoint {checkpoint!r}: unknown command {meta['command']!r} in {path}/meta.json "
        f"(expected one of {COMMANDS})",
    )
    return path, meta


def _known_fields(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` with only the fields ``cls`` has (JSON lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
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
    """A network with its checkpoint's weights, one batch and the task loss on it."""

    network: Any
    inputs: Any
    labels: Any
    loss: Any
    description: str

    def loss_fn(self) -> tf.Tensor:
        """The task loss on the batch, dropout off (a deterministic function of the weights)."""
        return self.loss(self.labels, self.network(self.inputs, training=False))


def _text_problem(meta: dict[str, Any], cfg: SharpnessConfig) -> Problem:
    import keras

    from adv_large_batch import text_data
    from adv_large_batch.finetune import FinetuneConfig, build_network

    run_cfg = _known_fields(FinetuneConfig, meta["config"])
    task = text_data.load_task(run_cfg.task, run_cfg.data_source, run_cfg.data_dir)
    train = task.train.take(cfg.data_limit or run_cfg.train_limit)
    index = batch_indices(len(train), cfg.batch_size, cfg.seed)
    batch = text_data.TextSplit(
        [[col[i] for i in index] for col in train.texts], train.labels[index]
    )
    network, tokenizer = build_network(run_cfg.model_path, task.num_classes, run_cfg.seed)
    inputs = {
        k: tf.constant(v)
        for k, v in text_data.tokenize(batch, tokenizer, run_cfg.max_seq_length).items()
    }
    loss = (
        keras.losses.MeanSquaredError()
        if task.regression
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return Problem(
        network,
        inputs,
        tf.constant(batch.labels),
        loss,
        f"task={task.name} model={run_cfg.model} max_seq_length={run_cfg.max_seq_length} "
        f"batch {cfg.batch_size} of {len(train)} training examples",
    )


def _image_problem(meta: dict[str, Any], cfg: SharpnessConfig) -> Problem:
    import keras

    from adv_large_batch import image_data
    from adv_large_batch.conadv import ConAdvConfig
    from adv_large_batch.models.resnet import build_image_model
    from adv_large_batch.train_images import ImageTrainConfig

    run_cfg = _known_fields(ImageTrainConfig, meta["config"])
    adv = _known_fields(ConAdvConfig, meta["adversarial"])
    data = image_data.load_image_dataset(
        run_cfg.dataset, run_cfg.data_dir, run_cfg.manual_dir, run_cfg.image_size
    ).limit(cfg.data_limit or run_cfg.train_limit, 1)
    arrays = image_data.materialize(data.train, data.num_train, data.image_shape)
    if arrays is not None:
        index = batch_indices(data.num_train, cfg.batch_size, cfg.seed)
        images = image_data.to_unit_range(tf.constant(arrays[0][index]))
        labels = tf.constant(arrays[1][index])
    else:  # too large to hold (ImageNet): the first examples, in order
        batch_indices(data.num_train, cfg.batch_size, cfg.seed)  # the size check
        images, labels = next(iter(image_data.eval_batches(data.train_for_eval(), cfg.batch_size)))
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

    from adv_large_batch import checkpointing

    path, meta = locate(cfg.checkpoint)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # second derivatives in full precision
    try:
        build = _text_problem if meta["command"] == "finetune" else _image_problem
        problem = build(meta, cfg)
        weights = [v for v in problem.network.weights if keras.backend.is_float_dtype(v.dtype)]
        checkpointing.restore_variables(path, weights)  # not the seed-generator states
        variables = problem.network.trainable_variables
        loss = float(problem.loss_fn())
        found = top_hessian_eigenvalue(
            problem.loss_fn, variables, cfg.iterations, cfg.tolerance, cfg.seed
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    method = meta["adversarial"].get("method")
    result = {
        **found,
        "checkpoint": path,
        "checkpoint_step": int(meta["global_step"]),
        "command": meta["command"],
        "method": method,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "tolerance": cfg.tolerance,
        "loss": loss,
        "num_weights": int(sum(np.prod(v.shape) for v in variables)),
    }
    state = "converged" if found["converged"] else f"not converged to {cfg.tolerance:g}"
    print(
        f"[sharpness] {meta['command']} method={method} {path} (step {meta['global_step']}), "
        f"{problem.description}, loss {loss:.6g}"
    )
    print(
        f"[sharpness] top Hessian eigenvalue {found['eigenvalue']:.6g} after "
        f"{found['iterations']} power iterations ({state})"
    )
    if cfg.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.json_out)), exist_ok=True)
        with open(cfg.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return result


__all__ = [
    "SharpnessConfig",
    "hessian_vector_product",
    "make_hvp",
    "run",
    "top_hessian_eigenvalue",
]
