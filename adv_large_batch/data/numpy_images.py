"""The image training stream in NumPy, without TensorFlow (the JAX backend's input).

The twin of ``image_pipeline.train_stream``'s random-access path (and of
``conadv.pairing.pair_with_future``, ``image_pipeline.eval_batches`` and the seeded
``flip_crop`` augmentation of ``augment.pad_crop``) for images held in memory
(``image_arrays.ImageArrays``):

* ``epoch_order``: epoch ``e``'s order is a seeded permutation of all examples, a pure
  function of (seed, e);
* ``image_batches``: global step ``s`` of an epoch takes positions ``[s B size, (s + 1)
  B size)`` of that order and rank ``r`` the contiguous slice ``r B .. (r + 1) B``; epoch
  = step // steps_per_epoch with steps_per_epoch = N // (B size), the remainder of each
  epoch dropped.  So the global batch of a step is the same for any number of workers,
  and a run resumed at step g (``start_step=g``) sees exactly the batches an
  uninterrupted run sees from g on.  With ``staleness`` tau >= 1 it yields ConAdv's
  pairs of batch t with batch t + tau;
* ``flip_pad_crop``: random horizontal flip, zero-pad by 1/8 of the side, random crop
  back, keyed by ``augment_keys(seed, epoch, index)``: stateless, so a resumed run
  redraws the same augmentation;
* ``eval_image_batches``: the whole split in order, the last batch smaller.

Same layout and contracts as the TensorFlow path, not the same random draws: the
permutation is NumPy's (Philox), not ``tf.random.experimental.index_shuffle``, and the
augmentation keys are a SplitMix64 hash, not ``stateless_fold_in``; a run must stay on
one of the two paths to resume exactly.

```python
import numpy as np
from adv_large_batch.data.numpy_images import flip_pad_crop, image_batches

images = np.arange(10 * 8 * 8, dtype=np.uint8).reshape(10, 8, 8, 1)
labels = np.arange(10, dtype=np.int32)
stream = image_batches(images, labels, batch_size=4, seed=0, augment=flip_pad_crop)
x, y = next(stream)                       # float32 [4, 8, 8, 1] in [0, 1], int32 [4]
pairs = image_batches(images, labels, 4, seed=0, staleness=1)
features, y_t = next(pairs)               # {"images", "next_images", "next_labels"}
assert features["images"].shape == (4, 8, 8, 1) and y_t.dtype == np.int32
```
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from adv_large_batch.data.eval_shards import eval_shard
from adv_large_batch.flags import ConfigError

#: ConAdv's feature keys, as ``conadv.pairing`` (which imports TensorFlow) names them.
IMAGES, NEXT_IMAGES, NEXT_LABELS = "images", "next_images", "next_labels"

#: The ``--augment`` policies this module has (the others need Keras' TensorFlow layers).
NUMPY_POLICIES = ("none", "flip_crop")

#: ``(float32 HxWxC image in [0, 1], key from augment_keys) -> image of the same shape``.
Augment = Callable[[np.ndarray, int], np.ndarray]

#: A training element: ``(x, y)``, or with staleness ``({IMAGES, NEXT_IMAGES, NEXT_LABELS}, y)``.
Element = tuple[Any, np.ndarray]

_UINT64 = 2**64


# ---- order and keys ----------------------------------------------------------------------------
def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """Epoch ``epoch``'s example order: a permutation of ``range(num_examples)`` (int64).

    A pure function of (``seed``, ``epoch``): NumPy's Philox generator keyed by
    ``[seed mod 2**64, epoch]``.  Not TensorFlow's ``index_shuffle`` order
    (``image_pipeline.train_stream`` draws its own).
    """
    key = np.array([int(seed) % _UINT64, int(epoch) % _UINT64], np.uint64)
    return np.random.Generator(np.random.Philox(key=key)).permutation(num_examples)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea and Flood 2014) on a uint64 array."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def augment_keys(seed: int, epoch: int, indices: Any) -> np.ndarray:
    """The augmentation keys (uint64, ``indices``' shape) of examples ``indices`` in ``epoch``.

    A pure function of (seed, epoch, example index): a chain of SplitMix64 hashes, so
    example i's augmentation in epoch e is the same in every run, worker and resume.
    """
    index = np.asarray(indices, np.int64)
    flat = index.reshape(-1).astype(np.uint64)
    base = np.full(flat.shape, int(seed) % _UINT64, np.uint64)
    base = _splitmix64(_splitmix64(base) ^ np.uint64(int(epoch) % _UINT64))
    return _splitmix64(base ^ flat).reshape(index.shape)


# ---- augmentation ------------------------------------------------------------------------------
def crop_padding(size: int) -> int:
    """Padding before the random crop: 4 px at 32 px (1/8 of the side), at least 1
    (``augment.crop_padding``, restated: that module imports TensorFlow)."""
    return max(1, size // 8)


def _shift(offset: int, n: int) -> tuple[slice, slice]:
    """``(destination, source)`` slices of a length-``n`` axis moved by ``-offset``:
    ``out[i] = image[i + offset]`` where that exists, else zero."""
    return slice(max(0, -offset), n - max(0, offset)), slice(max(0, offset), n + min(0, offset))


def flip_pad_crop(image: np.ndarray, key: int) -> np.ndarray:
    """``flip_crop`` of a small HxWxC image: a horizontal flip with probability 1/2, then a
    random HxW window of the image zero-padded by ``crop_padding`` on each side.

    A pure function of (image, ``key``): the flip is the key's top bit, the window's
    top and left offsets in ``[0, 2 pad]`` come from its two 32-bit halves.  The
    result has the image's shape and dtype and values from the image or 0.
    """
    if image.ndim != 3:
        raise ConfigError(f"flip_pad_crop needs an HxWxC image, got shape {image.shape}")
    height, width = image.shape[:2]
    pad_h, pad_w = crop_padding(height), crop_padding(width)
    key = int(key) % _UINT64
    top = ((key >> 32) & 0x7FFFFFFF) % (2 * pad_h + 1)
    left = (key & 0xFFFFFFFF) % (2 * pad_w + 1)
    if key >> 63:
        image = image[:, ::-1]
    rows_to, rows_from = _shift(top - pad_h, height)
    cols_to, cols_from = _shift(left - pad_w, width)
    out = np.zeros_like(image)
    out[rows_to, cols_to] = image[rows_from, cols_from]
    return out


def numpy_augmenter(policy: str) -> Augment | None:
    """``image_batches``' ``augment`` for an ``--augment`` policy: None for ``none``,
    ``flip_pad_crop`` for ``flip_crop`` (small, fixed-size images); ``ConfigError`` for the
    policies that need Keras' TensorFlow layers or the Inception crop."""
    if policy not in NUMPY_POLICIES:
        raise ConfigError(
            f"--augment must be one of {NUMPY_POLICIES} without TensorFlow, got {policy!r}"
        )
    return flip_pad_crop if policy == "flip_crop" else None


# ---- the training stream -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Layout:
    """Which examples each step of one worker takes (module docstring)."""

    seed: int
    batch_size: int
    rank: int
    size: int
    num_examples: int

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // (self.batch_size * self.size)

    def positions(self, step: int) -> tuple[int, slice]:
        """``(epoch, positions in that epoch's order)`` of global step ``step``'s slice."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        first = in_epoch * self.batch_size * self.size + self.rank * self.batch_size
        return epoch, slice(first, first + self.batch_size)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_stream(
    images: np.ndarray, labels: np.ndarray, batch_size: int, rank: int, size: int, rest: dict
) -> None:
    """``ConfigError`` naming the first bad argument of ``image_batches`` and what is allowed."""
    for name, value in (("batch_size", batch_size), ("size", size)):
        if not _is_int(value) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if not _is_int(rank) or not 0 <= rank < size:
        raise ConfigError(f"rank must be an integer in [0, {size}) (size={size}), got {rank!r}")
    for name, value in rest.items():
        if not _is_int(value) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ConfigError(
            f"images must be uint8 [N, H, W, C], got {images.dtype} of shape {images.shape}"
        )
    if labels.shape != images.shape[:1]:
        raise ConfigError(f"labels must have shape [{len(images)}], got {labels.shape}")
    if batch_size * size > len(images):
        raise ConfigError(
            f"global batch {batch_size * size} (batch_size {batch_size} x size {size}) is "
            f"larger than the {len(images)} training examples: not one full step per epoch"
        )


def _batches(
    images: np.ndarray,
    labels: np.ndarray,
    layout: _Layout,
    start_step: int,
    augment: Augment | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Worker ``layout.rank``'s ``(x, y)`` of every step from ``start_step`` on (endless)."""
    epoch, order = -1, np.zeros(0, np.int64)
    step = start_step
    while True:
        step_epoch, part = layout.positions(step)
        if step_epoch != epoch:  # one permutation per epoch
            epoch, order = step_epoch, epoch_order(layout.seed, step_epoch, layout.num_examples)
        index = order[part]
        x = images[index].astype(np.float32) / np.float32(255.0)
        if augment is not None:
            keys = augment_keys(layout.seed, epoch, index)
            x = np.stack([augment(image, int(k)) for image, k in zip(x, keys)])
        yield x, labels[index].astype(np.int32)
        step += 1


def _paired(batches: Iterator[tuple[np.ndarray, np.ndarray]], staleness: int) -> Iterator[Element]:
    """``pair_with_future`` on an iterator: ``({IMAGES: x_t, NEXT_IMAGES: x_t+tau,
    NEXT_LABELS: y_t+tau}, y_t)``; each batch is drawn once (a deque of tau + 1) and its
    arrays are made read-only, as they are handed out twice."""
    window: collections.deque = collections.deque()
    for x, y in batches:
        x.flags.writeable = False
        y.flags.writeable = False
        window.append((x, y))
        if len(window) > staleness:
            (x_t, y_t), (x_next, y_next) = window.popleft(), window[-1]
            yield {IMAGES: x_t, NEXT_IMAGES: x_next, NEXT_LABELS: y_next}, y_t


def image_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    rank: int = 0,
    size: int = 1,
    start_step: int = 0,
    augment: Augment | None = None,
    staleness: int = 0,
) -> Iterator[Element]:
    """The endless training stream of worker ``rank`` of ``size``, from global step
    ``start_step`` on: ``train_stream``'s random-access layout (module docstring).

    ``images``: uint8 ``[N, H, W, C]``; ``labels``: ``[N]``.  Each element is ``(x, y)``:
    x float32 ``[batch_size, H, W, C]`` in ``[0, 1]`` (``uint8 / 255``, then
    ``augment(image, augment_keys(seed, epoch, index))`` per example when given, e.g.
    ``flip_pad_crop``), y int32 ``[batch_size]``.  With ``staleness`` tau >= 1, element t
    is ConAdv's ``({IMAGES: x_t, NEXT_IMAGES: x_t+tau, NEXT_LABELS: y_t+tau}, y_t)``
    (``conadv.pairing.pair_with_future``), each batch computed once; element 0 pairs
    step ``start_step`` with step ``start_step + tau``, as the uninterrupted stream does.

    The arguments are checked when this is called (``ConfigError`` naming the value and
    what is allowed: batch_size or size < 1, rank outside ``[0, size)``, start_step or
    staleness < 0, images not uint8 NHWC, labels of another length, a global batch
    ``batch_size x size`` larger than N); nothing is computed until iterated.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _check_stream(
        images, labels, batch_size, rank, size, {"start_step": start_step, "staleness": staleness}
    )
    if not _is_int(seed):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if augment is not None and not callable(augment):
        raise ConfigError(f"augment must be None or a function (image, key) -> image: {augment!r}")
    layout = _Layout(int(seed), int(batch_size), int(rank), int(size), len(images))
    batches = _batches(images, labels, layout, int(start_step), augment)
    return _paired(batches, int(staleness)) if staleness else batches


# ---- evaluation --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class EvalImageBatches(Sequence):
    """``eval_image_batches``' batches: a re-iterable sequence of ``(x, y)``; with
    ``multiple > 1`` or ``size > 1``, of ``(x, y, w)``: each global batch padded to a
    multiple of ``multiple`` rows (copies of its first row, weight 0) and split into
    ``size`` contiguous slices, of which this is slice ``rank``."""

    images: np.ndarray
    labels: np.ndarray
    batch_size: int
    rank: int = 0
    size: int = 1
    multiple: int = 1

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        part = slice((i % len(self)) * self.batch_size, (i % len(self) + 1) * self.batch_size)
        x = self.images[part].astype(np.float32) / np.float32(255.0)
        y = self.labels[part].astype(np.int32)
        if self.multiple == 1 and self.size == 1:
            return x, y
        index, w = eval_shard(len(y), self.multiple, self.rank, self.size)
        return x[index], y[index], w


def eval_image_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    rank: int = 0,
    size: int = 1,
    multiple: int = 1,
) -> EvalImageBatches:
    """``image_pipeline.eval_batches`` in NumPy: ``(x, y)`` batches of the whole split in
    order, x float32 in ``[0, 1]``, y int32, the last batch smaller.  Re-iterable (a
    ``Sequence``: ``len``, indexing); arguments checked now (``ConfigError``).

    For data parallelism (every row counted once, every batch shardable): ``multiple``
    (the devices of the job, a divisor of ``batch_size`` x ... that ``size`` divides) pads
    each batch with weight-0 rows to a multiple of it, and process ``rank`` of ``size``
    gets its contiguous slice; batches are then ``(x, y, w)``."""
    images, labels = np.asarray(images), np.asarray(labels)
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ConfigError(
            f"eval_image_batches needs uint8 [N, H, W, C] images and [N] labels, got "
            f"{images.dtype} {images.shape} and {labels.shape}"
        )
    if not 0 <= rank < size or multiple < 1 or multiple % size:
        raise ConfigError(
            f"eval_image_batches needs 0 <= rank < size and multiple a multiple of size, got "
            f"rank={rank!r}, size={size!r}, multiple={multiple!r}"
        )
    return EvalImageBatches(images, labels, int(batch_size), int(rank), int(size), int(multiple))


__all__ = [
    "IMAGES",
    "NEXT_IMAGES",
    "NEXT_LABELS",
    "NUMPY_POLICIES",
    "EvalImageBatches",
    "augment_keys",
    "crop_padding",
    "epoch_order",
    "eval_image_batches",
    "flip_pad_crop",
    "image_batches",
    "numpy_augmenter",
]
