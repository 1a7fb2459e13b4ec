"""What the image loaders share: the dataset type (``ImageSplits``), the record of the
files an image folder leaves out (``SkippedFiles``), the evaluation crop
(``resize_central``) and the constants of image folders.

``image_datasets`` (the datasets and ``load_image_dataset``), ``image_folders`` (class
subfolders) and ``image_pipeline`` import from here and never from each other's types,
so the imports run one way: ``image_datasets`` -> ``image_folders`` -> ``image_splits``.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any

import tensorflow as tf

from adv_large_batch.data.augment import central_crop

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


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
    from adv_large_batch.data import image_datasets, image_pipeline

    data = image_datasets.load_image_dataset("fashion_mnist")
    print(data.num_train, data.image_shape)       # 60000 (28, 28, 1)
    augment = image_pipeline.seeded_augmenter("flip_crop", data.image_shape)
    stream = image_pipeline.train_stream(data.train, data.num_train, 256, 0, augment)
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


def resize_central(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """The evaluation crop as uint8: resize the shorter side to ``size / 0.875`` (bilinear,
    antialiased) and crop the central ``size x size`` (``augment.central_crop``, rounded)."""
    crop = central_crop(image, size)
    return tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)
