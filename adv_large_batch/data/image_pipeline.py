"""The image tf.data pipelines: the resumable training stream (``train_stream``: a pure
function of (seed, epoch, example) from any global step), seeded augmentation, and
evaluation batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from adv_large_batch.data import image_splits
from adv_large_batch.data.augment import central_crop
from adv_large_batch.flags import ConfigError


# ---- pipelines --------------------------------------------------------------------------------
def to_unit_range(image: tf.Tensor) -> tf.Tensor:
    """uint8 pixels -> float32 in ``[0, 1]``."""
    return tf.cast(image, tf.float32) / 255.0


def _fixed_size(split: tf.data.Dataset) -> bool:
    return split.element_spec[0].shape.is_fully_defined()


# ---- the resumable training stream ---------------------------------------------------------
#: ``--augment`` policies whose randomness is a pure function of (seed, epoch, example).
SEEDED_POLICIES = ("none", "flip_crop", "inception_crop")


#: ``(image in [0, 1], stateless seed of shape [2]) -> augmented image``.
SeededAugment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def materialize(
    split: tf.data.Dataset,
    num_examples: int,
    image_shape: tuple[int, ...],
    max_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(images, labels)`` of a split as arrays, or None.

    None when the split is larger than ``max_bytes`` (default ``IN_MEMORY_BYTES``)
    or its images have different sizes (ImageNet-scale training splits: they are
    cropped per example; an image folder's keeps its own in-memory copy when small).
    """
    max_bytes = image_splits.IN_MEMORY_BYTES if max_bytes is None else max_bytes
    if not _fixed_size(split) or num_examples * int(np.prod(image_shape)) > max_bytes:
        return None
    images, labels = [], []
    for x, y in split.batch(4096).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def seeded_augmenter(
    policy: str, image_shape: tuple[int, int, int], seed: int = 0
) -> SeededAugment:
    """``augment(image, seed)`` for ``train_stream``: stateless for ``SEEDED_POLICIES``.

    What a policy does depends on the image (``adv_large_batch.data.augment``'s table):
    an image already of ``image_shape`` (small, fixed-size data) gets the CIFAR
    augmentation (``flip_crop``: random flip, zero-pad by 1/8, random crop back);
    an image of any other or unknown size (ImageNet-scale data) gets the Inception
    crop to ``image_shape`` plus a random flip (``none``: the evaluation crop).
    ``inception_crop`` takes the Inception crop for both.  Every draw is
    ``tf.image.stateless_*`` from the per-example seed, so an example's augmentation
    depends only on (seed, epoch, example).  ``randaugment`` / ``augmix`` then apply
    Keras' layers, which draw from their own stateful seed generators: those ops
    are *not* reproduced by a resumed run.
    """
    from adv_large_batch.data.augment import (
        POLICIES,
        build_augmenter,
        inception_crop_flip,
        pad_crop,
    )

    if policy not in POLICIES:
        raise ConfigError(f"--augment must be one of {POLICIES}, got {policy!r}")
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ConfigError(f"image_shape must be (height, width, channels) >= 1, got {image_shape}")
    height, width, _ = image_shape
    mixed = policy not in SEEDED_POLICIES
    whole = build_augmenter(policy, image_shape, seed) if mixed else None
    mixer = build_augmenter(policy, image_shape, seed, crop=False) if mixed else None

    def augment(image: tf.Tensor, example_seed: tf.Tensor) -> tf.Tensor:
        small = image.shape.is_fully_defined() and tuple(image.shape) == image_shape
        if policy == "none":
            out = image if small else tf.clip_by_value(central_crop(image, (height, width)), 0, 1)
        elif small and policy == "flip_crop":
            out = pad_crop(image, example_seed)
        elif small and mixed:
            out = whole(image)
        else:
            out = inception_crop_flip(image, (height, width), example_seed)
            if mixed:
                out = mixer(out)
        return tf.ensure_shape(out, image_shape)

    return augment


def example_seed(seed: int, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The stateless seed of example ``index``'s augmentation in ``epoch``."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def random_access(split: tf.data.Dataset) -> bool:
    """True if ``tf.data.experimental.at`` can read example i of ``split`` directly.

    True for ``from_tensor_slices`` / ``range`` followed by ``map`` / ``take`` /
    ``skip`` (in-memory arrays, an image folder's file list); False for record
    files read in sequence (tfds) or after ``filter`` / ``unbatch``.
    """
    try:
        tf.data.experimental.at(split, 0)
    except (tf.errors.UnimplementedError, tf.errors.FailedPreconditionError):
        return False
    return True


def train_stream(
    split: tf.data.Dataset,
    num_examples: int,
    batch_size: int,
    seed: int,
    augment: SeededAugment | None = None,
    rank: int = 0,
    size: int = 1,
    start_step: int = 0,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
    shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
    """The endless training stream of one worker, from global step ``start_step`` on.

    Batches of ``batch_size`` ``[0, 1]`` images (float32, ``augment``'s shape) and
    int32 labels.  Epoch ``e`` is global steps ``[e S, (e + 1) S)`` with ``S =
    num_examples // (batch_size x size)``; the remainder of each epoch is dropped.
    Everything is a pure function of (``seed``, epoch, example), so a run resumed at
    step g sees exactly the batches an uninterrupted run sees from g on
    (``start_step=g``), and example ``i``'s augmentation in epoch ``e`` is
    ``augment(image_i, example_seed(seed, e, i))``.

    * With ``arrays`` (the split in memory, see ``materialize``), or a split with
      random access (``random_access``: an image folder's in-memory images or file
      list, read with ``tf.data.experimental.at``): epoch ``e``'s order is the
      stateless permutation ``index_shuffle(., [seed, e])`` of all examples and
      global step ``s`` of the epoch takes positions ``[s B size, (s + 1) B size)``
      of it, rank ``r`` the contiguous slice ``r B .. (r + 1) B``.  The global batch
      of a step is therefore the same for any number of workers (``size``) -- and
      the workers' slices are the micro-batches of one process that accumulates
      micro-batches of ``batch_size``, or MirroredStrategy's replica slices.  Both
      give the same batches for the same examples.
    * Otherwise (a sequential split: tfds record files, e.g. ImageNet): each worker
      takes every ``size``-th example (``shard``, before shuffling, so no worker
      reads the others' examples), shuffles it in blocks of ``shuffle_buffer``
      (ragged blocks for images of different sizes) with stateless permutations
      keyed by (seed, epoch, block), independent of TensorFlow's global seed, and
      skips the batches already consumed.  Exact for the same number of workers;
      batches differ from a different worker count's.
    """
    for value, name, low in ((batch_size, "batch_size", 1), (size, "size", 1)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if not 0 <= rank < size:
        raise ConfigError(f"rank must be in [0, {size}), got {rank}")
    if start_step < 0 or shuffle_buffer < 1:
        raise ConfigError(
            f"start_step must be >= 0 and shuffle_buffer >= 1, got {start_step}, {shuffle_buffer}"
        )
    global_batch = batch_size * size
    steps = num_examples // global_batch
    if steps < 1:
        raise ConfigError(
            f"global batch {global_batch} is larger than the {num_examples} training examples: "
            "not one full step per epoch"
        )
    augment = augment or (lambda image, _seed: image)
    keys = _StreamKeys(seed, batch_size, rank, size, steps, num_examples)
    if arrays is not None or random_access(split):
        rows, load = _random_access_rows(split, arrays, keys, start_step, augment)
    else:
        rows, load = _streamed_rows(split, keys, start_step, augment, shuffle_buffer)
    return (
        rows.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


@dataclasses.dataclass(frozen=True)
class _StreamKeys:
    """The facts ``train_stream``'s two paths share: seed, batch, worker, epoch size."""

    seed: int
    batch_size: int
    rank: int
    size: int
    steps: int  # per epoch
    num_examples: int


def _random_access_rows(
    split: tf.data.Dataset,
    arrays: tuple[np.ndarray, np.ndarray] | None,
    k: _StreamKeys,
    start_step: int,
    augment: SeededAugment,
) -> tuple[tf.data.Dataset, Callable[..., Any]]:
    """(epoch, index) rows of every step from ``start_step``, and their loader: epoch e's
    order is ``index_shuffle(., [seed, e])``; rank r takes slice r of each global batch."""
    if arrays is not None:
        images = tf.constant(arrays[0])
        labels = tf.constant(arrays[1], tf.int32)

        def fetch(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.gather(images, index), tf.gather(labels, index)

    else:

        def fetch(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image, label = tf.data.experimental.at(split, index)
            return image, tf.cast(label, tf.int32)

    order_seed = tf.constant(k.seed, tf.int64)
    global_batch = k.batch_size * k.size

    def step_rows(step: tf.Tensor) -> tf.data.Dataset:
        epoch = step // k.steps
        first = (step % k.steps) * global_batch + k.rank * k.batch_size
        positions = tf.range(first, first + k.batch_size, dtype=tf.int64)
        index = tf.random.experimental.index_shuffle(
            positions, tf.stack([order_seed, epoch]), tf.constant(k.num_examples - 1, tf.int64)
        )
        return tf.data.Dataset.from_tensor_slices((tf.fill([k.batch_size], epoch), index))

    def load(epoch: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = fetch(index)
        return augment(to_unit_range(image), example_seed(k.seed, epoch, index)), label

    return tf.data.Dataset.counter(start_step).flat_map(step_rows), load


def _streamed_rows(
    split: tf.data.Dataset,
    k: _StreamKeys,
    start_step: int,
    augment: SeededAugment,
    shuffle_buffer: int,
) -> tuple[tf.data.Dataset, Callable[..., Any]]:
    """(epoch, index, example) rows of a sequential split from ``start_step``: each worker's
    shard, block-shuffled by (seed, epoch, block), the consumed batches skipped."""
    first_epoch, in_epoch = divmod(start_step, k.steps)
    shard = split.enumerate()
    if k.size > 1:
        shard = shard.shard(k.size, k.rank)
    fixed = _fixed_size(split)

    def epoch_rows(epoch: tf.Tensor) -> tf.data.Dataset:
        # A block shuffle with stateless permutations keyed by (seed, epoch, block):
        # tf.data's own shuffle mixes in TensorFlow's global seed and is not
        # reproducible across pipelines once that seed is set (tests/conadv/test_conadv_resume.py).
        def permute(block_id: tf.Tensor, block: Any) -> Any:
            n = tf.shape(block[0])[0]
            key = tf.stack([tf.cast(k.seed, tf.int64) * 1_000_003 + epoch, block_id])
            order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)
            return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

        blocked = shard.batch(shuffle_buffer) if fixed else shard.ragged_batch(shuffle_buffer)
        blocks = blocked.enumerate().map(permute).unbatch()
        return blocks.take(k.steps * k.batch_size).map(
            lambda index, example: (epoch, index, example)
        )

    def load(epoch: tf.Tensor, index: tf.Tensor, example: tuple) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = example
        if isinstance(image, tf.RaggedTensor):
            image = image.to_tensor()
        image = to_unit_range(image)
        return augment(image, example_seed(k.seed, epoch, index)), tf.cast(label, tf.int32)

    rows = tf.data.Dataset.counter(first_epoch).flat_map(epoch_rows)
    return rows.skip(in_epoch * k.batch_size), load


def eval_batches(split: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """``[0, 1]`` batches of the whole split, in order (the last one may be smaller)."""
    if not _fixed_size(split):
        raise ConfigError(
            f"eval_batches needs images of one size, got {split.element_spec[0].shape}: an "
            "ImageNet-scale training split keeps its images' own sizes; evaluate "
            "ImageSplits.train_for_eval() (evaluation crops) or the test split"
        )

    def prepare(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return to_unit_range(image), tf.cast(label, tf.int32)

    return split.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
