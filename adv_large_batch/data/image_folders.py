"""Images in class subfolders (``--dataset folder``): decoded into memory when they fit,
else read from the file list (one decode per example) with a global per-epoch shuffle.

``data_dir/<class>/*.png|jpg|...`` (or ``data_dir/train/<class>/`` and
``data_dir/test/<class>/``); without train/test, every 10th image of each class (in name
order) is held out for testing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from adv_large_batch.config import ConfigError
from adv_large_batch.data import image_datasets
from adv_large_batch.data.image_datasets import (
    HOLDOUT_EVERY,
    IMAGE_EXTENSIONS,
    ImageSplits,
    resize_central,
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


def _decode(path: Any, channels: int = 0) -> tf.Tensor:
    """One image file as uint8 HxWxC (``channels=0``: as stored)."""
    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)


def _mixed_sizes(first: tuple[str, tuple], path: str, shape: tuple) -> ConfigError:
    return ConfigError(
        f"images of mixed sizes: {first[0]} is {'x'.join(map(str, first[1]))} but "
        f"{path} is {'x'.join(map(str, shape))} (HxWxC); resize them to one size "
        "or pass --image-size"
    )


def _decode_all(paths: list[str]) -> np.ndarray:
    images, first = [], None
    for path in paths:
        image = _decode(path).numpy()
        if first is None:
            first = (path, image.shape)
        elif image.shape != first[1]:
            raise _mixed_sizes(first, path, image.shape)
        images.append(image)
    return np.stack(images)


def _decode_originals(
    paths: list[str], max_bytes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """RGB images of any sizes packed as ``(pixels, offsets, shapes)``; None past ``max_bytes``."""
    images, total = [], 0
    for path in paths:
        image = _decode(path, 3).numpy()
        total += image.size
        if total > max_bytes:
            return None
        images.append(image)
    offsets = np.cumsum([0] + [image.size for image in images], dtype=np.int64)
    shapes = np.array([image.shape for image in images], np.int32)
    return np.concatenate([image.ravel() for image in images]), offsets, shapes


def _packed_split(
    packed: tuple[np.ndarray, np.ndarray, np.ndarray], labels: np.ndarray
) -> tf.data.Dataset:
    """In-memory images of different sizes, one example per (offset, shape); random access."""
    pixels, offsets, shapes = packed
    flat = tf.constant(pixels)

    def unpack(begin: tf.Tensor, end: tf.Tensor, shape: tf.Tensor, label: tf.Tensor) -> Any:
        return tf.ensure_shape(tf.reshape(flat[begin:end], shape), (None, None, 3)), label

    rows = (offsets[:-1], offsets[1:], shapes, labels)
    return tf.data.Dataset.from_tensor_slices(rows).map(unpack)


def _file_split(
    paths: Sequence[str], labels: np.ndarray, decode: Callable[[tf.Tensor], tf.Tensor]
) -> tf.data.Dataset:
    """Images read and decoded from ``paths`` when needed (random access, in file order)."""
    rows = (tf.constant(list(paths), tf.string), tf.constant(labels, tf.int32))
    return tf.data.Dataset.from_tensor_slices(rows).map(
        lambda path, label: (decode(path), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _fixed_decoder(first: tuple[str, tuple]) -> Callable[[tf.Tensor], tf.Tensor]:
    """Decode a file that must have the first image's shape (checked when read)."""
    shape = tuple(int(d) for d in first[1])
    message = (
        f"images of mixed sizes: {first[0]} is {'x'.join(map(str, shape))} (HxWxC) but this "
        "file differs; resize them to one size or pass --image-size:"
    )

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = _decode(path, shape[-1])
        same = tf.reduce_all(tf.equal(tf.shape(image), shape))
        with tf.control_dependencies([tf.debugging.Assert(same, [message, path, tf.shape(image)])]):
            image = tf.identity(image)
        return tf.ensure_shape(image, shape)

    return decode


def _listing(root: str) -> tuple[list, list, list[str]]:
    """((path, label) of the training images, of the test images, class names)."""
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
    return train_pairs, test_pairs, classes


def _native_size(
    train_paths: list[str],
    train_labels: np.ndarray,
    test_paths: list[str],
    test_labels: np.ndarray,
    max_bytes: int,
    common: dict[str, Any],
) -> ImageSplits:
    """A folder of one image shape, in memory if it fits, else read per example."""
    n = len(train_paths)
    first_image = _decode(train_paths[0]).numpy()
    first = (train_paths[0], first_image.shape)
    if n * first_image.size <= max_bytes:
        images = _decode_all(train_paths + test_paths)
        train = tf.data.Dataset.from_tensor_slices((images[:n], train_labels))
        test = tf.data.Dataset.from_tensor_slices((images[n:], test_labels))
        source = "memory"
    else:
        decode = _fixed_decoder(first)
        train = _file_split(train_paths, train_labels, decode)
        test = _file_split(test_paths, test_labels, decode)
        source = "files"
    shape = tuple(int(d) for d in first_image.shape)
    return ImageSplits("folder", train, test, image_shape=shape, source=source, **common)


def load_folder(
    root: str, image_size: int | None = None, in_memory_bytes: int | None = None
) -> ImageSplits:
    """Images in class subfolders (see the module docstring).

    Without ``image_size`` every image must have one shape (the native size:
    small, fixed-size data).  With ``image_size`` the data is ImageNet-scale: the
    training images are decoded as RGB at their own sizes (``variable_size``), the
    test images are evaluation crops (``resize_central``).

    Held in memory when the training images take at most ``in_memory_bytes``
    (default ``IN_MEMORY_BYTES``; estimated as files x ``image_size^2 x 3`` or files
    x the first image's bytes, then counted while decoding); otherwise both
    splits read and decode their files per example (``source == "files"``; a
    native-size image of another shape is an error when it is read).

    Raises ``FileNotFoundError`` when there are no images and ``ConfigError`` when
    they differ in size (unless ``image_size`` is given).
    """
    max_bytes = image_datasets.IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError(f"in_memory_bytes must be an integer >= 0, got {in_memory_bytes!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"--image-size must be an integer >= 1, got {image_size!r}")
    train_pairs, test_pairs, classes = _listing(root)
    train_paths = [p for p, _ in train_pairs]
    test_paths = [p for p, _ in test_pairs]
    train_labels = np.array([label for _, label in train_pairs], np.int32)
    test_labels = np.array([label for _, label in test_pairs], np.int32)
    n = len(train_pairs)
    common = {"num_train": n, "num_test": len(test_pairs), "num_classes": len(classes)}
    common["class_names"] = tuple(classes)

    if image_size is None:  # small, fixed-size images at their native size
        return _native_size(train_paths, train_labels, test_paths, test_labels, max_bytes, common)
    size = image_size
    packed = None
    if n * size * size * 3 <= max_bytes:
        packed = _decode_originals(train_paths, max_bytes)
    if packed is not None:
        train = _packed_split(packed, train_labels)
        crops = [resize_central(_decode(p, 3), size).numpy() for p in test_paths]
        crops = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        test = tf.data.Dataset.from_tensor_slices((crops, test_labels))
        source = "memory"
    else:
        train = _file_split(train_paths, train_labels, lambda path: _decode(path, 3))
        test = _file_split(
            test_paths,
            test_labels,
            lambda path: tf.ensure_shape(resize_central(_decode(path, 3), size), (size, size, 3)),
        )
        source = "files"
    return ImageSplits(
        "folder",
        train,
        test,
        image_shape=(size, size, 3),
        variable_size=True,
        source=source,
        **common,
    )
