"""Image datasets read into NumPy arrays, without TensorFlow (the JAX backend's input).

The array twin of ``image_datasets`` / ``image_folders`` for data that fits in memory:
NumPy only, plus Pillow (``PIL``) for image files and resizing, imported when needed.
Every loader returns an ``ImageArrays``: uint8 ``[N, H, W, C]`` images, int32 labels,
the class names and the files an image folder left out.
``numpy_images.image_batches`` turns one into the resumable training stream.

==============  ===================================================================
fashion_mnist   Debian's ``dataset-fashion-mnist`` files (``FASHION_MNIST_DIR``):
                ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (``read_idx``)
cifar10         the ``cifar-10-batches-py`` folder of ``cifar-10-python.tar.gz``
                (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``):
                never downloaded, a missing folder is a ``MissingDataError``
folder          ``data_dir/<class>/*.png|jpg|...`` (or ``data_dir/train/<class>/`` and
                ``data_dir/test/<class>/``) decoded with Pillow, with
                ``image_folders``' conventions (below)
==============  ===================================================================

Image folders follow ``image_folders``: classes are the subfolders holding at least
one file with an image extension, in name order; without a ``train`` folder (or with
``train`` but no ``test`` / ``val`` / ``validation``), every 10th image file of each
class in name order is held out for testing.  Files that are no images are left out
and reported (``ImageArrays.skipped``: ``(path, kind, detail)``, kinds as
``image_splits.SKIP_KINDS``): stray names without an image extension, empty files,
files Pillow does not recognise, files that do not decode (a truncated JPEG).  A file
that cannot be read at all (permissions) is an error, as is a class left without a
usable training image.  Without ``image_size`` every image keeps its native size (all
must match the first decodable training image, whose channel count every image is
converted to).  With ``image_size`` every image, training and test, is RGB and gets
the evaluation crop (``resize_central``: shorter side to ``size / 0.875``, bilinear
antialiased, central ``size x size``).  Differences from the TensorFlow path: its
training images at an ``image_size`` keep their own sizes for the Inception crop
(here they are cropped once, as the test images), and Pillow's resampling is not
bit-identical to ``tf.image.resize``.

```python
import numpy as np
from adv_large_batch.data.image_arrays import ImageArrays

data = ImageArrays("demo", np.zeros((6, 4, 4, 1), np.uint8), np.arange(6, dtype=np.int32) % 2,
                   np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1], np.int32), ("a", "b"))
assert data.image_shape == (4, 4, 1) and data.num_classes == 2
assert data.limit(train=3).num_train == 3
```
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib
import io
import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from adv_large_batch.flags import ConfigError


class MissingDataError(ConfigError, FileNotFoundError):
    """Data that is not where it was looked for (no download here): a ``ConfigError``
    and a ``FileNotFoundError``; the message names the path and what is expected."""


#: One file an image folder left out: ``(path, kind, detail)``.
Skipped = tuple[str, str, str]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageArrays:
    """Train and test splits of one image classification dataset, in memory.

    ``*_images``: uint8 ``[N, H, W, C]`` (both splits one shape); ``*_labels``: int32
    ``[N]`` in ``[0, len(class_names))``.  ``skipped``: an image folder's files left
    out (module docstring); empty for the other datasets.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    skipped: tuple[Skipped, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ConfigError(
                    f"{self.name} {split} images must be uint8 [N, H, W, C], got "
                    f"{images.dtype} of shape {images.shape}"
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ConfigError(
                    f"{self.name} {split} labels must be int32 [{len(images)}], got "
                    f"{labels.dtype} of shape {labels.shape}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ConfigError(
                f"{self.name}: train images are {self.train_images.shape[1:]} but test images "
                f"{self.test_images.shape[1:]} (HxWxC)"
            )

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``: the model's input."""
        return tuple(int(d) for d in self.train_images.shape[1:])  # type: ignore[return-value]

    def limit(self, train: int | None = None, test: int | None = None) -> ImageArrays:
        """The first ``train`` / ``test`` examples of each split (``None``: all)."""
        return dataclasses.replace(
            self,
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            test_images=self.test_images[:test],
            test_labels=self.test_labels[:test],
        )

    def skipped_line(self, examples: int = 3) -> str | None:
        """One line naming how many files were left out, a few of them and why; None if none."""
        if not self.skipped:
            return None
        named = "; ".join(
            f"{path} ({kind}: {detail})" for path, kind, detail in self.skipped[:examples]
        )
        more = " ..." if len(self.skipped) > examples else ""
        return f"skipped {len(self.skipped)} file(s) of the image folder: {named}{more}"


# ---- Fashion-MNIST (Debian files) -----------------------------------------------------------
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


def load_fashion_mnist_arrays(data_dir: str | None = None) -> ImageArrays:
    """Fashion-MNIST (60,000 + 10,000 28x28x1 grey images, 10 classes) from the Debian files
    in ``data_dir`` (default ``FASHION_MNIST_DIR``); ``MissingDataError`` (a
    ``FileNotFoundError``) saying how to install them when a file is missing."""
    root = data_dir or FASHION_MNIST_DIR
    arrays = {}
    for split in ("train", "t10k"):
        for kind, suffix in (("images", "idx3"), ("labels", "idx1")):
            path = os.path.join(root, f"{split}-{kind}-{suffix}-ubyte.gz")
            if not os.path.exists(path):
                raise MissingDataError(
                    f"Fashion-MNIST file {path} not found: install the Debian package with "
                    "`apt-get install dataset-fashion-mnist` (or pass --data-dir to a folder "
                    "holding the four *-ubyte.gz files)"
                )
            arrays[split, kind] = read_idx(path)
    return ImageArrays(
        "fashion_mnist",
        arrays["train", "images"][..., None],
        arrays["train", "labels"].astype(np.int32),
        arrays["t10k", "images"][..., None],
        arrays["t10k", "labels"].astype(np.int32),
        FASHION_MNIST_CLASSES,
    )


# ---- CIFAR-10 (the python pickles) ----------------------------------------------------------
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: The only globals a CIFAR-10 pickle may name: NumPy's array reconstruction (and the
#: ``_codecs.encode`` Python 3 writes for bytes at protocol 2).  Anything else is refused,
#: so a file planted in the folder cannot run code.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``_PICKLE_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        if module.startswith("numpy") and module.endswith("multiarray"):
            try:  # NumPy 2 moved numpy.core to numpy._core
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:  # NumPy 1.x
                return getattr(importlib.import_module("numpy.core.multiarray"), name)
        return super().find_class(module, name)


def _read_pickle(path: str) -> dict[str, Any]:
    """A CIFAR-10 pickle as a dict with str keys (the files were written by Python 2)."""
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ConfigError(f"{path} is not a CIFAR-10 python pickle ({err})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path} is not a CIFAR-10 python pickle (a {type(content).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def _cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 32, 32, 3] uint8, labels [N] int32)`` of one CIFAR-10 batch file.

    Each row of ``data`` is 3072 bytes: the red, green and blue 32x32 planes, row-major.
    """
    batch = _read_pickle(path)
    data = np.asarray(batch.get("data", np.zeros(0)))
    labels = np.asarray(batch.get("labels", []), np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != data.shape[:1] or (
        labels.size and not 0 <= labels.min() <= labels.max() < 10
    ):
        raise ConfigError(f"{path}: 'labels' must be {len(data)} classes in [0, 10)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def cifar10_folder(data_dir: str) -> str:
    """The ``cifar-10-batches-py`` folder: ``data_dir`` itself or its subfolder of that name;
    ``MissingDataError`` naming the path and the files expected when neither holds them."""
    for folder in (data_dir, os.path.join(data_dir, CIFAR10_FOLDER)):
        if os.path.isfile(os.path.join(folder, CIFAR10_TEST_FILE)):
            missing = [
                f for f in CIFAR10_TRAIN_FILES if not os.path.isfile(os.path.join(folder, f))
            ]
            if missing:
                raise MissingDataError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}")
            return folder
    raise MissingDataError(
        f"CIFAR-10 not found in {data_dir!r}: expected the folder {CIFAR10_FOLDER} (that "
        f"folder or one holding it) with {', '.join(CIFAR10_TRAIN_FILES)} and "
        f"{CIFAR10_TEST_FILE}, from "
        "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html); nothing is "
        "downloaded here"
    )


def load_cifar10_arrays(data_dir: str | None) -> ImageArrays:
    """CIFAR-10 (50,000 + 10,000 32x32x3 images, 10 classes) from the python pickles in
    ``data_dir`` (``cifar10_folder``); class names from ``batches.meta`` when present."""
    if not data_dir:
        raise MissingDataError(
            f"cifar10 needs data_dir, the folder {CIFAR10_FOLDER} (or the folder holding it)"
        )
    folder = cifar10_folder(data_dir)
    train = [_cifar_batch(os.path.join(folder, f)) for f in CIFAR10_TRAIN_FILES]
    test_images, test_labels = _cifar_batch(os.path.join(folder, CIFAR10_TEST_FILE))
    names = CIFAR10_CLASSES
    meta = os.path.join(folder, "batches.meta")
    if os.path.isfile(meta):
        found = _read_pickle(meta).get("label_names", [])
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in found) or names
    return ImageArrays(
        "cifar10",
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        names,
    )


# ---- an image folder (Pillow) -----------------------------------------------------------------
#: ``image_splits``' constants, restated (that module imports TensorFlow).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
HOLDOUT_EVERY = 10
CENTRAL_FRACTION = 0.875  # augment.CENTRAL_FRACTION

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # channels -> Pillow mode
_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "LA": 2, "La": 2, "RGBA": 4, "PA": 4}


def _pillow() -> Any:
    """``PIL.Image``, or a ``ConfigError`` saying Pillow is needed."""
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError(
            "reading image files and resizing without TensorFlow needs Pillow: pip install pillow"
        ) from None
    return Image


def _channels(image: Any) -> int:
    """The channels ``tf.io.decode_image(channels=0)`` would give a Pillow image."""
    if image.format == "GIF":
        return 3  # tf.io.decode_gif: RGB
    if image.mode == "P":
        return 4 if "transparency" in image.info else 3
    return _CHANNELS.get(image.mode, 3)


def _decode(path: str, channels: int) -> np.ndarray | Skipped:
    """``path`` decoded to uint8 HxWxC (``channels=0``: as stored), or ``(path, kind,
    detail)`` when it is no image.  A file that cannot be read is a ``ConfigError``."""
    Image = _pillow()
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as err:  # not a property of the file's bytes: every worker must agree
        raise ConfigError(f"could not read {path} ({type(err).__name__}: {err})") from err
    if not content:
        return path, "empty", "0 bytes"
    try:
        image = Image.open(io.BytesIO(content))
    except Image.UnidentifiedImageError:
        return path, "not an image", f"starts with {content[:8]!r}"
    try:
        image = image.convert(_MODES[channels or _channels(image)])
        pixels = np.asarray(image, np.uint8)
    except MemoryError:
        raise
    except Exception as err:  # Pillow's plugins raise many types for bad bytes
        return path, "damaged", f"does not decode: {type(err).__name__}: {err}"
    return pixels.reshape(*pixels.shape[:2], -1)


def resize_central(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The evaluation crop of a uint8 HWC image, as ``image_splits.resize_central``: resize
    (Pillow bilinear, antialiased) so the image covers ``size / 0.875``, then take the
    central ``size`` window (same arithmetic; pixels within rounding of TensorFlow's)."""
    Image = _pillow()
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ConfigError(f"crop size must be >= 1 x 1, got {height}x{width}")
    h, w, c = image.shape
    scale = max(height / h, width / w) / CENTRAL_FRACTION
    new_h, new_w = max(round(h * scale), height), max(round(w * scale), width)
    planes = [
        np.asarray(Image.fromarray(image[..., i]).resize((new_w, new_h), Image.BILINEAR))
        for i in range(c)
    ]
    resized = np.stack(planes, axis=-1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def _class_files(root: str, skipped: list[Skipped]) -> dict[str, list[str]]:
    """Per class folder of ``root`` (those holding an image file name), its image files in
    name order; its other files are recorded in ``skipped`` as stray."""
    if not os.path.isdir(root):
        raise MissingDataError(
            f"image folder {root!r} does not exist: expected <folder>/<class name>/<image>"
        )
    files = {}
    for c in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        with os.scandir(os.path.join(root, c)) as entries:
            names = sorted(e.name for e in entries if e.is_file())
        images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        if images:
            files[c] = [os.path.join(root, c, n) for n in images]
            skipped.extend(
                (os.path.join(root, c, n), "stray", "not an image file name")
                for n in names
                if not n.lower().endswith(IMAGE_EXTENSIONS)
            )
    return files


def _test_dir(root: str) -> str | None:
    if not os.path.isdir(os.path.join(root, "train")):
        return None
    for name in ("test", "val", "validation"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _listing(root: str, skipped: list[Skipped]) -> tuple[list, list, list[str]]:
    """``((path, label) of the training files, of the test files, class names)``, as
    ``image_folders._listing`` chooses them (before any file is decoded)."""
    has_train = os.path.isdir(os.path.join(root, "train"))
    train_files = _class_files(os.path.join(root, "train") if has_train else root, skipped)
    if not train_files:
        raise MissingDataError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders of {root!r}; "
            "expected <folder>/<class name>/<image> (or <folder>/train/<class name>/<image>)"
        )
    classes = sorted(train_files)
    index = {c: i for i, c in enumerate(classes)}
    test_dir = _test_dir(root)
    if test_dir is not None:
        test_files = _class_files(test_dir, skipped)
        unknown = sorted(set(test_files) - set(classes))
        if unknown:
            raise ConfigError(f"{test_dir} has classes not in the training folder: {unknown}")
        train = [(f, index[c]) for c in classes for f in train_files[c]]
        test = [(f, index[c]) for c, fs in sorted(test_files.items()) for f in fs]
        return train, test, classes
    train, test = [], []
    for c in classes:
        for i, f in enumerate(train_files[c]):
            held_out = i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
            (test if held_out else train).append((f, index[c]))
    return train, test, classes


def _decode_split(
    pairs: list, prepare: Callable[[str], np.ndarray | Skipped], skipped: list[Skipped]
) -> tuple[list[np.ndarray], list[int], list[str]]:
    """The pairs' images (``prepare(path)``), labels and paths; failures go to ``skipped``."""
    images, labels, paths = [], [], []
    for path, label in pairs:
        image = prepare(path)
        if isinstance(image, tuple):
            skipped.append(image)
        else:
            images.append(image)
            labels.append(label)
            paths.append(path)
    return images, labels, paths


def _stacked(images: list[np.ndarray], paths: list[str], first: tuple[str, tuple]) -> np.ndarray:
    """``images`` as one array of the first image's shape (``first``: its path and shape);
    ``ConfigError`` naming the first image that differs."""
    for image, path in zip(images, paths):
        if image.shape != first[1]:
            raise ConfigError(
                f"images of mixed sizes: {first[0]} is {'x'.join(map(str, first[1]))} but "
                f"{path} is {'x'.join(map(str, image.shape))} (HxWxC); resize them to one size "
                "or pass --image-size"
            )
    return np.stack(images) if images else np.zeros((0, *first[1]), np.uint8)


def _first_channels(pairs: list) -> int:
    """The channels of the first image of ``pairs`` that decodes (3 if none does)."""
    for path, _ in pairs:
        image = _decode(path, 0)
        if not isinstance(image, tuple):
            return int(image.shape[-1])
    return 3


def _refuse_empty_classes(classes: list[str], labels: list[int], skipped: list[Skipped]) -> None:
    """``ConfigError`` naming the classes left without a training image, and their faults."""
    present = set(labels)
    empty = [c for i, c in enumerate(classes) if i not in present]
    if not empty:
        return
    faults = [
        f"{path} ({kind}: {detail})"
        for path, kind, detail in skipped
        if os.path.basename(os.path.dirname(path)) == empty[0] and kind != "stray"
    ]
    raise ConfigError(
        f"no usable training image in class folder(s) {empty}: every image file there is "
        f"damaged or no image, e.g. {'; '.join(faults[:3])}; remove or replace those files"
    )


def load_folder_arrays(root: str, image_size: int | None = None) -> ImageArrays:
    """Images in class subfolders of ``root``, decoded with Pillow (module docstring).

    Without ``image_size``: native size, every image converted to the first decodable
    training image's channels, all of one shape (else ``ConfigError``).  With
    ``image_size``: RGB evaluation crops (``resize_central``) of ``image_size`` square.
    ``MissingDataError`` without a folder or images; ``ConfigError`` when a class keeps
    no usable training image.  Left-out files: ``ImageArrays.skipped``, in the order found.
    """
    if image_size is not None:
        _check_size(image_size)
    skipped: list[Skipped] = []
    train_pairs, test_pairs, classes = _listing(root, skipped)
    channels = 3 if image_size else _first_channels(train_pairs)

    def prepare(path: str) -> np.ndarray | Skipped:
        image = _decode(path, channels)
        if image_size is None or isinstance(image, tuple):
            return image
        return resize_central(image, image_size)

    train, train_labels, train_paths = _decode_split(train_pairs, prepare, skipped)
    _refuse_empty_classes(classes, train_labels, skipped)
    test, test_labels, test_paths = _decode_split(test_pairs, prepare, skipped)
    first = (train_paths[0], train[0].shape)
    return ImageArrays(
        "folder",
        _stacked(train, train_paths, first),
        np.array(train_labels, np.int32),
        _stacked(test, test_paths, first),
        np.array(test_labels, np.int32),
        tuple(classes),
        tuple(skipped),
    )


# ---- every dataset by name --------------------------------------------------------------------
def _check_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ConfigError(f"--image-size must be an integer >= 1, got {image_size!r}")
    if image_size < 1:
        raise ConfigError(f"--image-size must be an integer >= 1, got {image_size!r}")
    return int(image_size)


def resized(data: ImageArrays, image_size: int) -> ImageArrays:
    """``data`` with every image (both splits) replaced by its ``resize_central`` crop."""
    size = _check_size(image_size)

    def crops(images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), size, size, images.shape[-1]), np.uint8)
        for i, image in enumerate(images):
            out[i] = resize_central(image, size)
        return out

    return dataclasses.replace(
        data, train_images=crops(data.train_images), test_images=crops(data.test_images)
    )


#: ``load_image_arrays``' datasets: ``image_datasets.DATASETS`` less ``imagenet2012``.
ARRAY_DATASETS = ("fashion_mnist", "cifar10", "folder")


def load_image_arrays(
    name: str, data_dir: str | None = None, image_size: int | None = None
) -> ImageArrays:
    """Dataset ``name`` (one of ``ARRAY_DATASETS``) as arrays, from ``data_dir``.

    ``image_size``: every image becomes its evaluation crop of that size
    (``resize_central``; a folder's images are RGB then).  ``imagenet2012`` is read by
    tensorflow-datasets and is refused here (``ConfigError``): use ``folder`` on the
    extracted images.
    """
    if name not in ARRAY_DATASETS:
        raise ConfigError(
            f"--dataset must be one of {ARRAY_DATASETS} without TensorFlow, got {name!r} "
            "(imagenet2012 is read by tensorflow-datasets: use 'folder' on its images)"
        )
    if name == "folder":
        if not data_dir:
            raise MissingDataError("dataset 'folder' needs data_dir: the folder of class folders")
        return load_folder_arrays(data_dir, image_size)
    if name == "fashion_mnist":
        data = load_fashion_mnist_arrays(data_dir)
    else:
        data = load_cifar10_arrays(data_dir)
    return data if image_size is None else resized(data, image_size)


__all__ = [
    "ARRAY_DATASETS",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ImageArrays",
    "MissingDataError",
    "cifar10_folder",
    "load_cifar10_arrays",
    "load_fashion_mnist_arrays",
    "load_folder_arrays",
    "load_image_arrays",
    "read_idx",
    "resize_central",
    "resized",
]
