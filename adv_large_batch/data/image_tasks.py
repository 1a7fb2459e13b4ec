"""Image data from Python in one call: NumPy arrays a notebook hands straight to ``fit``.

```python
from adv_large_batch.data.image_tasks import load_image_task

task = load_image_task("fashion_mnist", limit=256)
print(task.x_train.shape, task.x_train.dtype, task.num_classes)   # (256, 28, 28, 1) float32 10
# model.fit(task.x_train, task.y_train, batch_size=32, validation_data=task.test)
```

Images are float32 in ``[0, 1]`` (``uint8 / 255``), ``[N, H, W, C]``; labels int32.  The
datasets are ``image_datasets``' (``DATASETS``): Fashion-MNIST from Debian's
``dataset-fashion-mnist`` files; ``cifar10`` / ``imagenet2012`` from a tensorflow-datasets
``data_dir`` prepared elsewhere (never downloaded: missing data is a ``FileNotFoundError``
saying how to prepare it); ``folder`` from ``data_dir``.  ImageNet-scale training images
(``variable_size``) come as their evaluation crops (no augmentation: for augmented
training use ``image_pipeline.train_stream``).  Everything is held in memory: pass
``limit`` for large sets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from adv_large_batch.data.image_datasets import DATASETS, load_image_dataset
from adv_large_batch.data.limits import check_limit
from adv_large_batch.flags import ConfigError

#: Examples converted per ``tf.data`` batch while reading a split into memory.
READ_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """Train and test arrays of one image dataset (see the module docstring).

    ``x_*``: float32 ``[N, H, W, C]`` in ``[0, 1]``; ``y_*``: int32 ``[N]``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)``: the model's input."""
        return tuple(self.x_train.shape[1:])

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x_train, y_train)``: ``model.fit(*task.train, ...)``."""
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x_test, y_test)``: ``validation_data=task.test``."""
        return self.x_test, self.y_test


def to_arrays(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """An unbatched ``(uint8 image, label)`` dataset as ``(float32 images / 255, int32
    labels)``; images of one shape (an empty dataset: ``[0]``-row arrays)."""
    images, labels = [], []
    for x, y in dataset.batch(READ_BATCH).as_numpy_iterator():
        images.append(np.asarray(x, np.float32) / np.float32(255.0))
        labels.append(np.asarray(y, np.int32))
    if not images:
        spec = dataset.element_spec[0]
        return np.zeros((0, *spec.shape), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(images), np.concatenate(labels)


def load_image_task(
    name: str,
    limit: int | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
) -> ImageTask:
    """Dataset ``name`` (one of ``image_datasets.DATASETS``) as NumPy arrays for ``fit``.

    ``limit``: the first ``limit`` examples of each split (None: all; a positive int, else
    ``ConfigError`` naming ``limit=`` and the value).  ``data_dir``: where the data is
    (Fashion-MNIST: Debian's folder by default; tfds: its ``data_dir``; ``folder``: the
    class folders).  ``image_size``: resize to ``image_size x image_size`` (ImageNet: 224
    if None).  An unknown ``name`` is a ``ConfigError`` listing the allowed ones; missing
    data a ``FileNotFoundError`` saying where it was looked for and how to get it.
    """
    if name not in DATASETS:
        raise ConfigError(
            f"load_image_task: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        )
    limit = check_limit(limit)
    try:
        data = load_image_dataset(name, data_dir=data_dir, image_size=image_size)
    except FileNotFoundError as err:  # its words are the command line's: say Python's
        raise FileNotFoundError(
            f"load_image_task({name!r}, data_dir={data_dir!r}): {err} (from Python, "
            "--data-dir is data_dir=)"
        ) from None
    data = data.limit(limit, limit)
    x_train, y_train = to_arrays(data.train_for_eval())
    x_test, y_test = to_arrays(data.test)
    return ImageTask(
        data.name, x_train, y_train, x_test, y_test, data.num_classes, data.class_names
    )


__all__ = ["READ_BATCH", "ImageTask", "load_image_task", "to_arrays"]
