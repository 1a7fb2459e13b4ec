"""Images in class subfolders (``--dataset folder``): decoded into memory when they fit,
else read from the file list (one decode per example) with a global per-epoch shuffle.

``data_dir/<class>/*.png|jpg|...`` (or ``data_dir/train/<class>/`` and
``data_dir/test/<class>/``); without train/test, every 10th image of each class (in name
order) is held out for testing.

Folders as found in the wild train: every image is decoded with its channels fixed
(grayscale and CMYK JPEGs become RGB at an ``image_size``; at the native size every
image takes the first training image's channel count; a PNG named ``.JPEG`` is read
as the PNG it is).  A file that cannot be read at all is an error naming it (the
workers must keep the same list).  Files that cannot be images are left out before
training and counted (``ImageSplits.skipped_files``): names without an image
extension (``.DS_Store``), empty files, files whose first bytes are no image format
(a text file named ``.JPEG``), and files that do not decode.  Finding those costs one
small read per file (its first and last 16 bytes, in threads); only a file that
does not end as its format ends (a truncated JPEG has no end-of-image marker) is
decoded to decide.  In-memory folders decode every file before training anyway,
and leave out any that fails.  A file-backed folder's file that fails to decode
only when read (damage inside a file that begins and ends well) is trained as a
black image with its label, named on stderr once and counted as ``substituted``:
the same for every epoch, worker and resumed run, so the stream stays exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow as tf

from adv_large_batch.data import image_splits
from adv_large_batch.data.image_splits import (
    HOLDOUT_EVERY,
    IMAGE_EXTENSIONS,
    ImageSplits,
    SkippedFiles,
    resize_central,
)
from adv_large_batch.flags import ConfigError

# ---- which files are images ----------------------------------------------------------------
_PROBE_BYTES = 16
_SCAN_CHUNK = 256  # files per thread task: about 30 us a file from the page cache


def _format(head: bytes) -> str | None:
    """The image format ``tf.io.decode_image`` reads that ``head`` (a file's first bytes) starts."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _ends_well(kind: str, head: bytes, tail: bytes, size: int) -> bool:
    """True if the file ends as a complete ``kind`` file ends (False: decode it to decide)."""
    if kind == "jpeg":
        return tail.endswith(b"\xff\xd9")  # end of image
    if kind == "png":
        return tail.endswith(b"IEND\xaeB`\x82")  # the IEND chunk and its CRC
    if kind == "gif":
        return tail.endswith(b";")  # the trailer
    if kind == "bmp":
        return int.from_bytes(head[2:6], "little") <= size  # the header's file size
    return int.from_bytes(head[4:8], "little") + 8 <= size  # webp: the RIFF chunk's size


def _probe(path: str) -> tuple[str, str] | bool:
    """``(kind, detail)`` of a file that is no image, True if it may be one, False if only a
    decode can tell (it starts as an image but does not end as one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PROBE_BYTES)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(size - _PROBE_BYTES, 0))
            tail = f.read()
    except OSError as err:  # not a property of the file's bytes: every worker must agree
        raise ConfigError(
            f"could not read {path} ({type(err).__name__}: {err}); a file one worker cannot "
            "read would give the workers different file lists: fix the folder and rerun"
        ) from err
    if not head:
        return "empty", "0 bytes"
    kind = _format(head)
    if kind is None:
        return "not an image", f"starts with {head[:8]!r}"
    return _ends_well(kind, head, tail, size)


def _probe_all(paths: Sequence[str]) -> list[tuple[str, str] | bool]:
    return [_probe(path) for path in paths]


def _decode_error(image_bytes: bytes) -> str | None:
    """Why ``tf.io.decode_image`` fails on ``image_bytes`` (None if it decodes)."""
    try:
        tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    except tf.errors.OpError as err:
        return _message(err)
    return None


def _message(err: tf.errors.OpError) -> str:
    """A TensorFlow error's own words, without the op and device it names."""
    return err.message.splitlines()[0].split("}} ")[-1].split(" [Op:")[0].strip()


def scan_files(paths: Sequence[str], skipped: SkippedFiles) -> list[str]:
    """The ``paths`` that are images; the others are recorded in ``skipped``.

    A small read of every file (``_probe``, in threads), then a decode of the few
    that start as an image but do not end as one.  A pure function of the files'
    bytes: every worker that scans the same folder keeps the same list.
    """
    chunks = [paths[i : i + _SCAN_CHUNK] for i in range(0, len(paths), _SCAN_CHUNK)]
    with ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:  # I/O: threads
        probes = [probe for chunk in pool.map(_probe_all, chunks) for probe in chunk]
    kept = []
    for path, probe in zip(paths, probes):
        if probe is False:  # starts as an image, does not end as one: decode to decide
            with open(path, "rb") as f:
                error = _decode_error(f.read())
            probe = True if error is None else ("damaged", f"does not decode: {error}")
        if probe is True:
            kept.append(path)
        else:
            skipped.skip(path, *probe)
    return kept


# ---- a folder of images -----------------------------------------------------------------------
def _class_files(root: str, skipped: SkippedFiles) -> dict[str, list[str]]:
    """Per class folder of ``root``, its files with an image extension, in name order; the
    class folders' other files are recorded in ``skipped`` as stray."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = {}
    for c in classes:
        with os.scandir(os.path.join(root, c)) as entries:
            names = sorted(e.name for e in entries if e.is_file())
        images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        if images:
            files[c] = [os.path.join(root, c, n) for n in images]
            for n in names:
                if not n.lower().endswith(IMAGE_EXTENSIONS):
                    skipped.skip(os.path.join(root, c, n), "stray", "not an image file name")
    return files


def _decode(path: Any, channels: int = 0) -> tf.Tensor:
    """One image file as uint8 HxWxC (``channels=0``: as stored)."""
    return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)


def _decoded(path: str, channels: int, skipped: SkippedFiles) -> np.ndarray | None:
    """One file decoded before training, or None (recorded in ``skipped``) if it fails."""
    try:
        return _decode(path, channels).numpy()
    except tf.errors.InvalidArgumentError as err:  # the bytes do not decode: every worker agrees
        skipped.skip(path, "damaged", f"does not decode: {_message(err)}")
        return None


def _without(pairs: list, skipped: SkippedFiles) -> list:
    """``(path, label)`` pairs less the files recorded in ``skipped``."""
    bad = skipped.paths()
    return [pair for pair in pairs if pair[0] not in bad]


def _guarded(
    decode_bytes: Callable[[tf.Tensor], tf.Tensor], blank_shape: tuple, skipped: SkippedFiles
) -> Callable[[tf.Tensor], tf.Tensor]:
    """``decode(path)`` for a file-backed split that does not fail on a file's bytes.

    A file that does not decode (damage the scan before training cannot see) gives a
    black uint8 image of ``blank_shape``, the same every time it is read, and is
    recorded once in ``skipped.substituted`` (a ``tf.py_function`` on that branch
    only).  Errors reading the file still raise.
    """
    blank = tf.zeros(blank_shape, tf.uint8)

    def attempt(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return decode_bytes(contents), tf.constant(True)

    def decode(path: tf.Tensor) -> tf.Tensor:
        contents = tf.io.read_file(path)
        tried = tf.data.Dataset.from_tensors(contents).map(attempt).ignore_errors()
        fallback = tf.data.Dataset.from_tensors((blank, tf.constant(False)))
        image, ok = tried.concatenate(fallback).take(1).get_single_element()
        noted = tf.cond(
            ok,
            lambda: tf.constant(True),
            lambda: tf.py_function(skipped.substitute, [path], tf.bool),
        )
        with tf.control_dependencies([noted]):
            return tf.identity(image)

    return decode


def _mixed_sizes(first: tuple[str, tuple], path: str, shape: tuple) -> ConfigError:
    return ConfigError(
        f"images of mixed sizes: {first[0]} is {'x'.join(map(str, first[1]))} but "
        f"{path} is {'x'.join(map(str, shape))} (HxWxC); resize them to one size "
        "or pass --image-size"
    )


def _decode_all(
    pairs: list, first: tuple[str, tuple], skipped: SkippedFiles
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of the pairs that decode, each with the first image's shape."""
    images, labels = [], []
    for path, label in pairs:
        image = _decoded(path, first[1][-1], skipped)
        if image is None:
            continue
        if image.shape != first[1]:
            raise _mixed_sizes(first, path, image.shape)
        images.append(image)
        labels.append(label)
    stacked = np.stack(images) if images else np.zeros((0, *first[1]), np.uint8)
    return stacked, np.array(labels, np.int32)


def _decode_originals(
    pairs: list, max_bytes: int, skipped: SkippedFiles
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None:
    """RGB images of any sizes packed as ``(pixels, offsets, shapes)`` with their labels, of
    the pairs that decode; None past ``max_bytes``."""
    images, labels, total = [], [], 0
    for path, label in pairs:
        image = _decoded(path, 3, skipped)
        if image is None:
            continue
        total += image.size
        if total > max_bytes:
            return None
        images.append(image)
        labels.append(label)
    offsets = np.cumsum([0] + [image.size for image in images], dtype=np.int64)
    shapes = np.array([image.shape for image in images], np.int32).reshape(-1, 3)
    pixels = np.concatenate([image.ravel() for image in images] or [np.zeros(0, np.uint8)])
    return (pixels, offsets, shapes), np.array(labels, np.int32)


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


def _file_split(pairs: list, decode: Callable[[tf.Tensor], tf.Tensor]) -> tf.data.Dataset:
    """Images read and decoded from the pairs' paths when needed (random access, in order)."""
    paths = [path for path, _ in pairs]
    labels = np.array([label for _, label in pairs], np.int32)
    rows = (tf.constant(paths, tf.string, shape=[len(paths)]), tf.constant(labels, tf.int32))
    return tf.data.Dataset.from_tensor_slices(rows).map(
        lambda path, label: (decode(path), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _fixed_decoder(
    first: tuple[str, tuple], skipped: SkippedFiles
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Decode a file that must have the first image's shape (checked when read)."""
    shape = tuple(int(d) for d in first[1])
    message = (
        f"images of mixed sizes: {first[0]} is {'x'.join(map(str, shape))} (HxWxC) but this "
        "file differs; resize them to one size or pass --image-size:"
    )
    guarded = _guarded(
        lambda contents: tf.io.decode_image(contents, shape[-1], expand_animations=False),
        shape,
        skipped,
    )

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = guarded(path)
        same = tf.reduce_all(tf.equal(tf.shape(image), shape))
        with tf.control_dependencies([tf.debugging.Assert(same, [message, path, tf.shape(image)])]):
            image = tf.identity(image)
        return tf.ensure_shape(image, shape)

    return decode


def _listing(root: str, skipped: SkippedFiles) -> tuple[list, list, list[str]]:
    """((path, label) of the training images, of the test images, class names).

    The held-out images are chosen among the files with an image extension; then the
    files that are no images are left out (``scan_files``, recorded in ``skipped``).
    """
    has_split = os.path.isdir(os.path.join(root, "train"))
    test_dir = None
    for name in ("test", "val", "validation") if has_split else ():
        if os.path.isdir(os.path.join(root, name)):
            test_dir = os.path.join(root, name)
            break
    train_files = _class_files(os.path.join(root, "train") if has_split else root, skipped)
    if not train_files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders of {root!r}; "
            "expected <folder>/<class name>/<image> (or <folder>/train/<class name>/<image>)"
        )
    classes = sorted(train_files)
    index = {c: i for i, c in enumerate(classes)}
    if test_dir is not None:
        test_files = _class_files(test_dir, skipped)
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
    scan_files([path for path, _ in train_pairs + test_pairs], skipped)
    train_pairs, test_pairs = _without(train_pairs, skipped), _without(test_pairs, skipped)
    _refuse_empty_classes(classes, train_pairs, train_files, skipped)
    return train_pairs, test_pairs, classes


def _refuse_empty_classes(
    classes: list[str], pairs: list, files: dict[str, list[str]], skipped: SkippedFiles
) -> None:
    """A ``ConfigError`` naming a class left without a training image, and its files' faults."""
    present = {label for _, label in pairs}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if not empty:
        return
    theirs = set(files[empty[0]])
    faults = [
        f"{path} ({kind}: {detail})" for path, kind, detail in skipped.skipped if path in theirs
    ]
    raise ConfigError(
        f"no usable training image in class folder(s) {empty}: every image file there is "
        f"damaged or no image, e.g. {'; '.join(faults[:3])}; remove or replace those files"
    )


def _native_size(
    train_pairs: list, test_pairs: list, max_bytes: int, common: dict[str, Any]
) -> ImageSplits:
    """A folder of one image shape, in memory if it fits, else read per example.

    The shape, channels included, is the first training image's (as stored); every
    image is decoded with that many channels (a grayscale JPEG in an RGB folder as RGB).
    """
    skipped = common["skipped_files"]
    first_image = None
    for path, _ in train_pairs:
        first_image = _decoded(path, 0, skipped)
        if first_image is not None:
            first = (path, first_image.shape)
            break
    if first_image is None:
        raise ConfigError(f"no training image decodes: {skipped.line()}")
    train_pairs = _without(train_pairs, skipped)  # those that failed before the first
    if len(train_pairs) * first_image.size <= max_bytes:
        train_images, train_labels = _decode_all(train_pairs, first, skipped)
        test_images, test_labels = _decode_all(test_pairs, first, skipped)
        train = tf.data.Dataset.from_tensor_slices((train_images, train_labels))
        test = tf.data.Dataset.from_tensor_slices((test_images, test_labels))
        source = "memory"
        sizes = {"num_train": len(train_labels), "num_test": len(test_labels)}
    else:
        decode = _fixed_decoder(first, skipped)
        train, test = _file_split(train_pairs, decode), _file_split(test_pairs, decode)
        source = "files"
        sizes = {"num_train": len(train_pairs), "num_test": len(test_pairs)}
    shape = tuple(int(d) for d in first_image.shape)
    return ImageSplits("folder", train, test, image_shape=shape, source=source, **sizes, **common)


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
    native-size image of another shape is an error when it is read).  Files that are
    no images are left out and listed in ``skipped_files`` (module docstring).

    Raises ``FileNotFoundError`` when there are no images, ``ConfigError`` when they
    differ in size (unless ``image_size`` is given) or a class keeps no usable image.
    """
    max_bytes = image_splits.IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError(f"in_memory_bytes must be an integer >= 0, got {in_memory_bytes!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"--image-size must be an integer >= 1, got {image_size!r}")
    skipped = SkippedFiles()
    train_pairs, test_pairs, classes = _listing(root, skipped)
    common = {"num_classes": len(classes), "class_names": tuple(classes), "skipped_files": skipped}
    if image_size is None:  # small, fixed-size images at their native size
        return _native_size(train_pairs, test_pairs, max_bytes, common)
    size = image_size
    packed = None
    if len(train_pairs) * size * size * 3 <= max_bytes:
        packed = _decode_originals(train_pairs, max_bytes, skipped)
    if packed is not None:
        train = _packed_split(*packed)
        crops, test_labels = [], []
        for path, label in test_pairs:
            image = _decoded(path, 3, skipped)
            if image is not None:
                crops.append(resize_central(image, size).numpy())
                test_labels.append(label)
        crops = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        test = tf.data.Dataset.from_tensor_slices((crops, np.array(test_labels, np.int32)))
        source = "memory"
        sizes = {"num_train": len(packed[1]), "num_test": len(test_labels)}
    else:
        train_pairs = _without(train_pairs, skipped)  # those found while decoding, too
        decode = _guarded(
            lambda contents: tf.io.decode_image(contents, 3, expand_animations=False),
            (size, size, 3),
            skipped,
        )
        train = _file_split(train_pairs, decode)
        test = _file_split(
            test_pairs,
            lambda path: tf.ensure_shape(resize_central(decode(path), size), (size, size, 3)),
        )
        source = "files"
        sizes = {"num_train": len(train_pairs), "num_test": len(test_pairs)}
    return ImageSplits(
        "folder",
        train,
        test,
        image_shape=(size, size, 3),
        variable_size=True,
        source=source,
        **sizes,
        **common,
    )
