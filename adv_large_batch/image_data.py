"""Image datasets for the ConAdv runs and their tf.data pipelines.

ConAdv §4.1 trains on ImageNet-1k; the runs here also take smaller sets with
the same code path:

fashion_mnist  Debian's ``dataset-fashion-mnist`` files (real, offline):
               ``/usr/share/datasets/fashion-mnist/{train,t10k}-*-ubyte.gz``
cifar10        tensorflow-datasets ``cifar10`` (prepared in ``data_dir``; no download)
imagenet2012   tensorflow-datasets ``imagenet2012``, prepared in ``data_dir``, or
               built from the ILSVRC2012 tarballs in ``manual_dir`` (never downloaded)
folder         ``data_dir/<class>/*.png|jpg|...`` (or ``data_dir/train/<class>/`` and
               ``data_dir/test/<class>/``); without train/test, every 10th image of
               each class (in name order) is held out for testing

Every loader returns an ``ImageSplits`` of unbatched ``(uint8 HxWxC image,
int32 label)`` datasets of one fixed image shape (``image_size`` resizes:
shorter side to ``size / 0.875``, then a central crop, as for ImageNet
evaluation).  ``train_batches`` / ``eval_batches`` scale to ``[0, 1]`` floats,
shuffle, shard, augment (``adv_large_batch.augment``) and batch.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from adv_large_batch.config import ConfigError

DATASETS = ("fashion_mnist", "cifar10", "imagenet2012", "folder")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TFDS_SPLITS = {"cifar10": ("train", "test"), "imagenet2012": ("train", "validation")}
CENTRAL_FRACTION = 0.875
HOLDOUT_EVERY = 10


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """Train and test splits of one image classification dataset.

    ```python
    data = load_image_dataset("fashion_mnist")
    print(data.num_train, data.image_shape)       # 60000 (28, 28, 1)
    batches = train_batches(data.train, batch_size=256, seed=0)
    ```
    """

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_test: int
    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...] = ()

    def limit(self, train: int | None = None, test: int | None = None) -> "ImageSplits":
        """The first ``train`` / ``test`` examples of each split (``None``: all)."""
        num_train = self.num_train if train is None else min(train, self.num_train)
        num_test = self.num_test if test is None else min(test, self.num_test)
        return dataclasses.replace(
            self,
            train=self.train.take(num_train),
            test=self.test.take(num_test),
            num_train=num_train,
            num_test=num_test,
        )


# ---- Fashion-MNIST (Debian files) -----------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """An IDX file (``*-ubyte`` or ``*-ubyte.gz``) of unsigned bytes as an array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: str | None = None) -> ImageSplits:
    """Fashion-MNIST (60,000 + 10,000 28x28 grey images, 10 classes) from the Debian files."""
    root = data_dir or FASHION_MNIST_DIR
    arrays = {}
    for split in ("train", "t10k"):
        for kind, suffix in (("images", "idx3"), ("labels", "idx1")):
            path = os.path.join(root, f"{split}-{kind}-{suffix}-ubyte.gz")
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"Fashion-MNIST file {path} not found: install the Debian package with "
                    "`apt-get install dataset-fashion-mnist` (or pass --data-dir to a folder "
                    "holding the four *-ubyte.gz files)"
                )
            arrays[split, kind] = read_idx(path)

    def split(name: str) -> tf.data.Dataset:
        images = arrays[name, "images"][..., None]
        labels = arrays[name, "labels"].astype(np.int32)
        return tf.data.Dataset.from_tensor_slices((images, labels))

    return ImageSplits(
        "fashion_mnist",
        split("train"),
        split("t10k"),
        len(arrays["train", "labels"]),
        len(arrays["t10k", "labels"]),
        10,
        (28, 28, 1),
        FASHION_MNIST_CLASSES,
    )


# ---- tensorflow-datasets ----------------------------------------------------------------------
def resize_central(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize the shorter side to ``size / 0.875`` and crop the central ``size x size``."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / CENTRAL_FRACTION) / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    new = tf.maximum(new, size)
    resized = tf.image.resize(image, new, antialias=True)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    crop = resized[top : top + size, left : left + size]
    return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)


def _with_size(ds: tf.data.Dataset, image_size: int | None, channels: int) -> tf.data.Dataset:
    if image_size is None:
        return ds

    def resize(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = resize_central(image, image_size)
        return tf.ensure_shape(image, (image_size, image_size, channels)), label

    return ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE)


def _count(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1))


def load_tfds(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    image_size: int | None = None,
) -> ImageSplits:
    """``cifar10`` or ``imagenet2012`` from tensorflow-datasets, never downloading.

    ``data_dir`` is the tfds data folder; with ``manual_dir`` (ImageNet: the folder
    of ``ILSVRC2012_img_train.tar`` / ``ILSVRC2012_img_val.tar``) the dataset is
    prepared from those files first.  ImageNet needs an ``image_size`` (224 if None).
    """
    import tensorflow_datasets as tfds

    if name not in TFDS_SPLITS:
        raise ConfigError(f"tfds dataset must be one of {tuple(TFDS_SPLITS)}, got {name!r}")
    if name == "imagenet2012" and image_size is None:
        image_size = 224
    train_split, test_split = TFDS_SPLITS[name]
    kwargs: dict = {"data_dir": data_dir, "as_supervised": True, "with_info": True}
    if manual_dir:
        kwargs["download"] = True  # builds from manual_dir; ImageNet has nothing to download
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)
        }
    else:
        kwargs["download"] = False
    try:
        (train, test), info = tfds.load(name, split=[train_split, test_split], **kwargs)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as err:
        hint = (
            " or pass --manual-dir with the ILSVRC2012 tarballs" if name == "imagenet2012" else ""
        )
        raise FileNotFoundError(
            f"tensorflow-datasets {name!r} is not prepared in data_dir "
            f"{data_dir or '~/tensorflow_datasets'}: prepare it there where the network is "
            f"reachable (tfds build {name}){hint} ({err})"
        ) from None
    channels = int(info.features["image"].shape[-1])
    labels = info.features["label"]

    def cast(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return image, tf.cast(label, tf.int32)

    train = _with_size(train.map(cast), image_size, channels)
    test = _with_size(test.map(cast), image_size, channels)
    shape = info.features["image"].shape
    height, width = (image_size, image_size) if image_size else shape[:2]
    return ImageSplits(
        name,
        train,
        test,
        _count(train),
        _count(test),
        int(labels.num_classes),
        (int(height), int(width), channels),
        tuple(labels.names),
    )


# ---- a folder of images -----------------------------------------------------------------------
def _class_files(root: str) -> dict[str, list[str]]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = {
        c: sorted(
            os.path.join(root, c, f)
            for f in os.listdir(os.path.join(root, c))
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        for c in classes
    }
    return {c: fs for c, fs in files.items() if fs}


def _decode_all(paths: list[str]) -> np.ndarray:
    images, first = [], None
    for path in paths:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).numpy()
        if first is None:
            first = (path, image.shape)
        elif image.shape != first[1]:
            raise ConfigError(
                f"images of mixed sizes: {first[0]} is {'x'.join(map(str, first[1]))} but "
                f"{path} is {'x'.join(map(str, image.shape))} (HxWxC); resize them to one size "
                "or pass --image-size"
            )
        images.append(image)
    return np.stack(images)


def load_folder(root: str, image_size: int | None = None) -> ImageSplits:
    """Images in class subfolders (see the module docstring), decoded into memory.

    With ``image_size`` every image is decoded as RGB and resized (``resize_central``).

    Raises ``FileNotFoundError`` when there are no images and ``ConfigError`` when
    they differ in size (unless ``image_size`` resizes them all).
    """
    has_split = os.path.isdir(os.path.join(root, "train"))
    test_dir = None
    for name in ("test", "val", "validation") if has_split else ():
        if os.path.isdir(os.path.join(root, name)):
            test_dir = os.path.join(root, name)
            break
    train_files = _class_files(os.path.join(root, "train") if has_split else root)
    if not train_files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders of {root!r}; "
            "expected <folder>/<class name>/<image> (or <folder>/train/<class name>/<image>)"
        )
    classes = sorted(train_files)
    index = {c: i for i, c in enumerate(classes)}
    if test_dir is not None:
        test_files = _class_files(test_dir)
        unknown = sorted(set(test_files) - set(classes))
        if unknown:
            raise ConfigError(f"{test_dir} has classes not in the training folder: {unknown}")
        train_pairs = [(f, index[c]) for c in classes for f in train_files[c]]
        test_pairs = [(f, index[c]) for c, fs in sorted(test_files.items()) for f in fs]
    else:
        train_pairs, test_pairs = [], []
        for c in classes:
            for i, f in enumerate(train_files[c]):
                (test_pairs if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else train_pairs).append(
                    (f, index[c])
                )
    paths = [p for p, _ in train_pairs + test_pairs]
    if image_size is None:
        images = _decode_all(paths)
    else:
        images = np.stack(
            [
                resize_central(
                    tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False),
                    image_size,
                ).numpy()
                for p in paths
            ]
        )
    labels = np.array([label for _, label in train_pairs + test_pairs], np.int32)
    n = len(train_pairs)

    def split(lo: int, hi: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((images[lo:hi], labels[lo:hi]))

    return ImageSplits(
        "folder",
        split(0, n),
        split(n, len(paths)),
        n,
        len(paths) - n,
        len(classes),
        tuple(int(d) for d in images.shape[1:]),
        tuple(classes),
    )


def load_image_dataset(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    image_size: int | None = None,
) -> ImageSplits:
    """Dispatch to the loader of ``name`` (one of ``DATASETS``)."""
    if name == "fashion_mnist":
        data = load_fashion_mnist(data_dir)
        if image_size is not None:
            train = _with_size(data.train, image_size, 1)
            test = _with_size(data.test, image_size, 1)
            data = dataclasses.replace(
                data, train=train, test=test, image_shape=(image_size, image_size, 1)
            )
        return data
    if name in TFDS_SPLITS:
        return load_tfds(name, data_dir, manual_dir, image_size)
    if name == "folder":
        if not data_dir:
            raise ConfigError("--dataset folder needs --data-dir <folder of class subfolders>")
        return load_folder(data_dir, image_size)
    raise ConfigError(f"--dataset must be one of {DATASETS}, got {name!r}")


# ---- pipelines --------------------------------------------------------------------------------
def to_unit_range(image: tf.Tensor) -> tf.Tensor:
    """uint8 pixels -> float32 in ``[0, 1]``."""
    return tf.cast(image, tf.float32) / 255.0


def train_batches(
    split: tf.data.Dataset,
    batch_size: int,
    seed: int,
    augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    shard: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None,
    shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
    """An endless stream of shuffled, augmented ``[0, 1]`` batches of ``batch_size``.

    Reshuffled every pass; ``fit`` runs it by ``steps_per_epoch``.  ``shard`` is the
    backend's (each worker its own examples, sharded before shuffling).
    """
    if shard is not None:
        split = shard(split)
    augment = augment or (lambda image: image)

    def prepare(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return augment(to_unit_range(image)), tf.cast(label, tf.int32)

    return (
        split.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


# ---- the resumable training stream ---------------------------------------------------------
#: Training sets up to this size (uint8 pixels) are held in memory and shuffled by index.
IN_MEMORY_BYTES = 512 * 2**20
#: ``--augment`` policies whose randomness is a pure function of (seed, epoch, example).
SEEDED_POLICIES = ("none", "flip_crop")

#: ``(image in [0, 1], stateless seed of shape [2]) -> augmented image``.
SeededAugment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def materialize(
    split: tf.data.Dataset,
    num_examples: int,
    image_shape: tuple[int, ...],
    max_bytes: int = IN_MEMORY_BYTES,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(images, labels)`` of a split as arrays, or None if it is larger than ``max_bytes``."""
    if num_examples * int(np.prod(image_shape)) > max_bytes:
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

    ``flip_crop`` is ``augment.build_augmenter``'s (random horizontal flip, pad by
    ``crop_padding`` and crop back) drawn with ``tf.image.stateless_random_*`` from the
    per-example seed, so an example's augmentation depends only on (seed, epoch, example).
    ``randaugment`` / ``augmix`` use Keras' layers, which draw from their own stateful
    seed generators: they ignore the seed and are *not* reproduced by a resumed run.
    """
    from adv_large_batch.augment import POLICIES, build_augmenter, crop_padding

    if policy not in POLICIES:
        raise ConfigError(f"--augment must be one of {POLICIES}, got {policy!r}")
    if policy == "none":
        return lambda image, _seed: image
    if policy not in SEEDED_POLICIES:
        stateful = build_augmenter(policy, image_shape, seed)
        return lambda image, _seed: stateful(image)
    height, width, _ = image_shape
    pad_h, pad_w = crop_padding(height), crop_padding(width)

    def flip_crop(image: tf.Tensor, example_seed: tf.Tensor) -> tf.Tensor:
        flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        return tf.ensure_shape(
            tf.image.stateless_random_crop(padded, image_shape, crop_seed), image_shape
        )

    return flip_crop


def example_seed(seed: int, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The stateless seed of example ``index``'s augmentation in ``epoch``."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


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

    Batches of ``batch_size`` ``[0, 1]`` images (float32) and int32 labels.  Epoch
    ``e`` is global steps ``[e S, (e + 1) S)`` with ``S = num_examples // (batch_size
    x size)``; the remainder of each epoch is dropped.  Everything is a pure function
    of (``seed``, epoch, example), so a run resumed at step g sees exactly the batches
    an uninterrupted run sees from g on (``start_step=g``), and example ``i``'s
    augmentation in epoch ``e`` is ``augment(image_i, example_seed(seed, e, i))``.

    * With ``arrays`` (the split in memory, see ``materialize``): epoch ``e``'s order
      is the stateless permutation ``index_shuffle(., [seed, e])`` of all examples and
      global step ``s`` of the epoch takes positions ``[s B size, (s + 1) B size)`` of
      it, rank ``r`` the contiguous slice ``r B .. (r + 1) B``.  The global batch of a
      step is therefore the same for any number of workers (``size``) -- and the
      workers' slices are the micro-batches of one process that accumulates
      micro-batches of ``batch_size``, or MirroredStrategy's replica slices.
    * Without (a streamed split, e.g. ImageNet): each worker takes every ``size``-th
      example (``shard``, before shuffling, so no worker reads the others' examples),
      shuffles it in blocks of ``shuffle_buffer`` with stateless permutations keyed by
      (seed, epoch, block), independent of TensorFlow's global seed,
      and skips the batches already consumed.  Exact for the same number
      of workers; batches differ from a different worker count's.
    """
    global_batch = batch_size * size
    steps = num_examples // global_batch
    if steps < 1:
        raise ConfigError(
            f"global batch {global_batch} is larger than the {num_examples} training examples: "
            "not one full step per epoch"
        )
    augment = augment or (lambda image, _seed: image)
    first_epoch, in_epoch = divmod(start_step, steps)

    if arrays is not None:
        images = tf.constant(arrays[0])
        labels = tf.constant(arrays[1], tf.int32)
        order_seed = tf.constant(seed, tf.int64)

        def step_rows(step: tf.Tensor) -> tf.data.Dataset:
            epoch = step // steps
            first = (step % steps) * global_batch + rank * batch_size
            positions = tf.range(first, first + batch_size, dtype=tf.int64)
            index = tf.random.experimental.index_shuffle(
                positions, tf.stack([order_seed, epoch]), tf.constant(num_examples - 1, tf.int64)
            )
            return tf.data.Dataset.from_tensor_slices((tf.fill([batch_size], epoch), index))

        def load(epoch: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image = to_unit_range(tf.gather(images, index))
            return augment(image, example_seed(seed, epoch, index)), tf.gather(labels, index)

        rows = tf.data.Dataset.counter(start_step).flat_map(step_rows)
    else:
        shard = split.enumerate()
        if size > 1:
            shard = shard.shard(size, rank)

        def epoch_rows(epoch: tf.Tensor) -> tf.data.Dataset:
            # A block shuffle with stateless permutations keyed by (seed, epoch, block):
            # tf.data's own shuffle mixes in TensorFlow's global seed and is not
            # reproducible across pipelines once that seed is set (tests/test_conadv_resume).
            def permute(block_id: tf.Tensor, block: Any) -> Any:
                n = tf.shape(block[0])[0]
                key = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + epoch, block_id])
                order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)
                return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

            blocks = shard.batch(shuffle_buffer).enumerate().map(permute).unbatch()
            return blocks.take(steps * batch_size).map(
                lambda index, example: (epoch, index, example)
            )

        def load(epoch: tf.Tensor, index: tf.Tensor, example: tuple) -> tuple[tf.Tensor, tf.Tensor]:
            image, label = example
            image = to_unit_range(image)
            return augment(image, example_seed(seed, epoch, index)), tf.cast(label, tf.int32)

        rows = tf.data.Dataset.counter(first_epoch).flat_map(epoch_rows).skip(in_epoch * batch_size)
    return (
        rows.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def eval_batches(split: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """``[0, 1]`` batches of the whole split, in order (the last one may be smaller)."""

    def prepare(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return to_unit_range(image), tf.cast(label, tf.int32)

    return split.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "IN_MEMORY_BYTES",
    "SEEDED_POLICIES",
    "ImageSplits",
    "eval_batches",
    "example_seed",
    "load_fashion_mnist",
    "load_folder",
    "load_image_dataset",
    "load_tfds",
    "materialize",
    "read_idx",
    "resize_central",
    "seeded_augmenter",
    "to_unit_range",
    "train_batches",
    "train_stream",
]
