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


def eval_batches(split: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """``[0, 1]`` batches of the whole split, in order (the last one may be smaller)."""

    def prepare(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return to_unit_range(image), tf.cast(label, tf.int32)

    return split.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "ImageSplits",
    "eval_batches",
    "load_fashion_mnist",
    "load_folder",
    "load_image_dataset",
    "load_tfds",
    "read_idx",
    "resize_central",
    "to_unit_range",
    "train_batches",
]
