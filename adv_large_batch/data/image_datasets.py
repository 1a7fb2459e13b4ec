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
int32 label)`` datasets.  Two kinds:

* **Small, fixed-size images** (Fashion-MNIST, CIFAR-10, a folder at its native
  size): both splits at one shape; ``image_size`` resizes both (``resize_central``).
* **ImageNet-scale images** (``imagenet2012``, a folder at an ``image_size``;
  ``LARGE_IMAGE_DATASETS``): ``variable_size`` is set and the *training* split keeps
  every image at its own size (decoded, not resized) so that the training crop
  (``augment.inception_crop``, drawn per example by ``seeded_augmenter``) sees the
  whole image; the *test* split is the evaluation crop (``resize_central``: shorter
  side to ``size / 0.875``, central ``size x size``).  ``image_shape`` is the
  model's input, ``(size, size, 3)``; ``resolve_image_size`` picks ``size`` from the
  model when ``--image-size`` is unset (ResNets 224, EfficientNet-B0 224, -B2 260).

An image folder whose training images would take more than ``IN_MEMORY_BYTES``
(estimated as files x ``size^2 x 3``, or files x the first image's bytes at the
native size; then counted while decoding) is not decoded into memory: its
splits read and decode each file when an example is needed (``source ==
"files"``).  ``train_stream`` turns any split into the resumable training stream
(global per-epoch shuffle for in-memory and file-backed splits, see there);
``eval_batches`` scales to ``[0, 1]`` floats and batches in order.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from adv_large_batch.data.augment import central_crop
from adv_large_batch.flags import ConfigError

#: Datasets whose training images keep their own sizes at an ``image_size`` (see above).
LARGE_IMAGE_DATASETS = ("imagenet2012", "folder")


#: ``imagenet2012``'s resolution when neither ``--image-size`` nor the model gives one.
IMAGENET_DEFAULT_SIZE = 224


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


HOLDOUT_EVERY = 10


#: Training sets up to this size (uint8 pixels) are held in memory (read at call time,
#: so a test may lower it).
IN_MEMORY_BYTES = 512 * 2**20


#: ``SkippedFiles``' kinds of file, the ones that need a look first.
SKIP_KINDS = ("damaged", "not an image", "empty", "unreadable", "stray")


class SkippedFiles:
    """The files of an image folder that are not trained on, and why.

    ``skipped``: ``(path, kind, detail)`` of each file left out before training, in
    the order found.  ``kind`` (``SKIP_KINDS``): ``"stray"`` (a file in a class
    folder whose name has no image extension: ``.DS_Store``, ``Thumbs.db``),
    ``"empty"``, ``"not an image"`` (its first bytes are no format
    ``tf.io.decode_image`` reads), ``"damaged"`` (it does not decode: a truncated
    JPEG) or ``"unreadable"``.  ``substituted``: files that passed the checks before
    training but failed to decode when a file-backed split read them; each was
    replaced by a black image (same label) and named on stderr once.  Thread-safe:
    the tf.data threads record into it.
    """

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str, str]] = []
        self.substituted: list[str] = []
        self._lock = threading.Lock()

    def skip(self, path: str, kind: str, detail: str) -> None:
        with self._lock:
            self.skipped.append((path, kind, detail))

    def paths(self) -> set[str]:
        with self._lock:
            return {path for path, _, _ in self.skipped}

    def substitute(self, path: Any) -> bool:
        """``tf.py_function`` body: record ``path`` (a scalar string tensor) once, say so."""
        name = path.numpy().decode("utf-8", "replace")
        with self._lock:
            new = name not in self.substituted
            if new:
                self.substituted.append(name)
        if new:
            print(
                f"[image folder] {name} does not decode: trained as a black image (same label) "
                "in its place; counted in skipped_files.substituted",
                file=sys.stderr,
                flush=True,
            )
        return True

    def summary(self, examples: int = 5) -> dict[str, Any]:
        """``{"count", "by_kind", "examples", "substituted": {"count", "examples"}}`` (JSON)."""
        with self._lock:
            skipped, substituted = list(self.skipped), list(self.substituted)
        skipped.sort(key=lambda file: SKIP_KINDS.index(file[1]))  # damage first, stray last
        by_kind: dict[str, int] = {}
        for _, kind, _ in skipped:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        return {
            "count": len(skipped),
            "by_kind": by_kind,
            "examples": [f"{path} ({kind}: {detail})" for path, kind, detail in skipped[:examples]],
            "substituted": {"count": len(substituted), "examples": substituted[:examples]},
        }

    def line(self, examples: int = 3) -> str | None:
        """One line naming the count, the kinds and a few of the files; None if none."""
        summary = self.summary(examples)
        if not summary["count"]:
            return None
        kinds = ", ".join(f"{n} {kind}" for kind, n in summary["by_kind"].items())
        more = " ..." if summary["count"] > examples else ""
        return (
            f"skipped {summary['count']} file(s) of the image folder ({kinds}): "
            f"{'; '.join(summary['examples'])}{more}"
        )


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """Train and test splits of one image classification dataset.

    ``image_shape`` is the model's input.  With ``variable_size`` (ImageNet-scale
    data) the training images keep their own sizes and ``seeded_augmenter`` crops
    them to ``image_shape``; ``train_for_eval()`` gives them the evaluation crop.
    ``source`` says where the training examples come from: ``"memory"``,
    ``"files"`` (an image folder too large for memory, read per example) or
    ``"tfds"``.  ``skipped_files``: an image folder's files left out as damaged or
    stray (``SkippedFiles``; None for the other datasets).

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
    variable_size: bool = False
    source: str = "memory"
    skipped_files: SkippedFiles | None = None

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

    def train_for_eval(self) -> tf.data.Dataset:
        """The training images as evaluation sees them (``image_shape``, no randomness).

        The training split itself, or for ``variable_size`` data its evaluation crops.
        """
        if not self.variable_size:
            return self.train
        shape = self.image_shape

        def crop(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.ensure_shape(resize_central(image, shape[:2]), shape), label

        return self.train.map(crop, num_parallel_calls=tf.data.AUTOTUNE)


def resolve_image_size(
    dataset: str, model: str | None = None, image_size: int | None = None
) -> int | None:
    """The ``--image-size`` a run uses: ``image_size`` if given, else a default.

    The default is the model's resolution (``models.resnet.default_image_size``:
    ``resnet*`` 224, ``efficientnet_b0`` 224, ``efficientnet_b2`` 260) for the
    ImageNet-scale datasets (``LARGE_IMAGE_DATASETS``), where ``imagenet2012`` falls
    back to 224 for models without one (``cifar_resnet*``); None (the dataset's own
    size) otherwise.

    ```python
    resolve_image_size("imagenet2012", "efficientnet_b2")        # 260
    resolve_image_size("imagenet2012", "efficientnet_b2", 224)   # 224: explicit wins
    resolve_image_size("cifar10", "resnet50")                    # None: 32 x 32
    ```
    """
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"--image-size must be an integer >= 1, got {image_size!r}")
        return image_size
    if dataset not in LARGE_IMAGE_DATASETS:
        return None
    size = None
    if model is not None:
        from adv_large_batch.models.image_models import default_image_size

        size = default_image_size(model)
    if size is None and dataset == "imagenet2012":
        size = IMAGENET_DEFAULT_SIZE
    return size


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
def resize_central(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """The evaluation crop as uint8: resize the shorter side to ``size / 0.875`` (bilinear,
    antialiased) and crop the central ``size x size`` (``augment.central_crop``, rounded)."""
    crop = central_crop(image, size)
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
    prepared from those files first.  ``cifar10``: ``image_size`` resizes both
    splits.  ``imagenet2012`` (``image_size``: 224 if None) is ImageNet-scale: the
    training images keep their sizes (``variable_size``), the validation images are
    evaluation crops.
    """
    # (A little over 60 lines: the offline tfds call and its one error message, then
    # the per-split preparation, read in order; splitting them would hide the flow.)
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
    from adv_large_batch.data.image_folders import load_folder

    return load_folder(data_dir, image_size, in_memory)


#: ``--dataset``: name -> loader(data_dir, manual_dir, image_size, in_memory_bytes).
LOADERS: dict[str, Callable[..., ImageSplits]] = {
    "fashion_mnist": _fashion_mnist,
    "cifar10": _tfds("cifar10"),
    "imagenet2012": _tfds("imagenet2012"),
    "folder": _folder,
}
DATASETS = tuple(LOADERS)


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
