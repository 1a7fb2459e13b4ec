"""Image datasets for the ConAdv runs (their tf.data pipelines: ``image_pipeline``).

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

Every loader returns an ``image_splits.ImageSplits`` of unbatched ``(uint8 HxWxC image,
int32 label)`` datasets.  Two kinds:

* **Small, fixed-size images** (Fashion-MNIST, CIFAR-10, a folder at its native
  size): both splits at one shape; ``image_size`` resizes both
  (``image_splits.resize_central``).
* **ImageNet-scale images** (``imagenet2012``, a folder at an ``image_size``;
  ``LARGE_IMAGE_DATASETS``): ``variable_size`` is set and the *training* split keeps
  every image at its own size (decoded, not resized) so that the training crop
  (``augment.inception_crop``, drawn per example by ``image_pipeline.seeded_augmenter``)
  sees the whole image; the *test* split is the evaluation crop (``resize_central``: shorter
  side to ``size / 0.875``, central ``size x size``).  ``image_shape`` is the
  model's input, ``(size, size, 3)``; ``resolve_image_size`` picks ``size`` from the
  model when ``--image-size`` is unset (ResNets 224, EfficientNet-B0 224, -B2 260).

An image folder whose training images would take more than ``image_splits.IN_MEMORY_BYTES``
(estimated as files x ``size^2 x 3``, or files x the first image's bytes at the
native size; then counted while decoding) is not decoded into memory: its
splits read and decode each file when an example is needed (``source ==
"files"``).  ``image_pipeline.train_stream`` turns any split into the resumable training
stream (global per-epoch shuffle for in-memory and file-backed splits, see there);
``image_pipeline.eval_batches`` scales to ``[0, 1]`` floats and batches in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

# FASHION_MNIST_* and read_idx live in image_arrays (no TensorFlow); re-exported here.
from adv_large_batch.data.image_arrays import (  # noqa: F401
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    load_fashion_mnist_arrays,
    read_idx,
)
from adv_large_batch.data.image_folders import load_folder
from adv_large_batch.data.image_names import DATASETS, IMAGENET_DEFAULT_SIZE, LARGE_IMAGE_DATASETS
from adv_large_batch.data.image_splits import ImageSplits, resize_central
from adv_large_batch.flags import ConfigError

TFDS_SPLITS = {"cifar10": ("train", "test"), "imagenet2012": ("train", "validation")}


# ---- Fashion-MNIST (Debian files; the arrays: image_arrays) --------------------------------
def load_fashion_mnist(data_dir: str | None = None) -> ImageSplits:
    """Fashion-MNIST (60,000 + 10,000 28x28 grey images, 10 classes) from the Debian files
    (``image_arrays.load_fashion_mnist_arrays``)."""
    arrays = load_fashion_mnist_arrays(data_dir)
    return ImageSplits(
        "fashion_mnist",
        tf.data.Dataset.from_tensor_slices((arrays.train_images, arrays.train_labels)),
        tf.data.Dataset.from_tensor_slices((arrays.test_images, arrays.test_labels)),
        arrays.num_train,
        arrays.num_test,
        arrays.num_classes,
        arrays.image_shape,
        arrays.class_names,
    )


# ---- tensorflow-datasets ----------------------------------------------------------------------
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
    prepared from those files first.  ``cifar10``: ``image_size`` resizes both
    splits.  ``imagenet2012`` (``image_size``: 224 if None) is ImageNet-scale: the
    training images keep their sizes (``variable_size``), the validation images are
    evaluation crops.
    """
    import tensorflow_datasets as tfds

    if name not in TFDS_SPLITS:
        raise ConfigError(f"tfds dataset must be one of {tuple(TFDS_SPLITS)}, got {name!r}")
    large = name in LARGE_IMAGE_DATASETS
    if large and image_size is None:
        image_size = IMAGENET_DEFAULT_SIZE
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

    train = train.map(cast)
    if not large:
        train = _with_size(train, image_size, channels)
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
        variable_size=large,
        source="tfds",
    )


def _fashion_mnist(
    data_dir: str | None, manual_dir: str | None, image_size: int | None, in_memory: int | None
) -> ImageSplits:
    data = load_fashion_mnist(data_dir)
    if image_size is None:
        return data
    train = _with_size(data.train, image_size, 1)
    test = _with_size(data.test, image_size, 1)
    return dataclasses.replace(
        data, train=train, test=test, image_shape=(image_size, image_size, 1)
    )


def _tfds(name: str) -> Callable[..., ImageSplits]:
    def load(
        data_dir: str | None, manual_dir: str | None, image_size: int | None, in_memory: int | None
    ) -> ImageSplits:
        return load_tfds(name, data_dir, manual_dir, image_size)

    return load


def _folder(
    data_dir: str | None, manual_dir: str | None, image_size: int | None, in_memory: int | None
) -> ImageSplits:
    if not data_dir:
        raise ConfigError("dataset 'folder' needs data_dir, the folder of class subfolders")
    return load_folder(data_dir, image_size, in_memory)


#: ``--dataset``: name -> loader(data_dir, manual_dir, image_size, in_memory_bytes).
LOADERS: dict[str, Callable[..., ImageSplits]] = {
    "fashion_mnist": _fashion_mnist,
    "cifar10": _tfds("cifar10"),
    "imagenet2012": _tfds("imagenet2012"),
    "folder": _folder,
}
assert tuple(LOADERS) == DATASETS, "image_names.DATASETS names every loader"


def load_image_dataset(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    image_size: int | None = None,
    in_memory_bytes: int | None = None,
) -> ImageSplits:
    """The splits of dataset ``name`` (one of ``DATASETS``), by its ``LOADERS`` entry.

    ``image_size`` is the resolution (see ``resolve_image_size`` for the per-model
    default); ``in_memory_bytes`` is ``load_folder``'s memory limit.
    """
    if name not in LOADERS:
        raise ConfigError(f"--dataset must be one of {DATASETS}, got {name!r}")
    return LOADERS[name](data_dir, manual_dir, image_size, in_memory_bytes)
