"""What ``ConAdv`` checks in the images a caller hands it, before any work.

* **Pixel range.**  The network and the attack take images in ``[0, 1]`` (``--adv-eps`` is
  pixels out of 255 of that range; the examples are clipped to it), so images outside it,
  most often ``uint8`` 0-255, would train and predict on something else without a word.
  They are refused, not converted (:func:`check_pixel_range`): integer images by their
  dtype (arrays and ``tf.data`` alike), float arrays and eager tensors by their min and
  max (one pass over the array; a ``tf.data.Dataset`` of floats is not read ahead).
* **Batch rows.**  ConAdv with ``staleness >= 1`` keeps ``staleness`` adversarial batches
  of ``batch_size`` rows per replica; a batch of another size cannot go into that buffer
  (:func:`batch_rows_message`).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from adv_large_batch.conadv.paired_keys import IMAGES, NEXT_IMAGES

#: What to do with images outside [0, 1] (the end of the refusal's message).
PIXEL_FIX = (
    "ConAdv takes float images in [0, 1] (its eps is pixels out of 255 of that range): "
    "divide 0-255 images by 255, e.g. x.astype('float32') / 255 "
    "(adv_large_batch.data.image_tasks.load_image_task returns them so)"
)


def image_parts(x: Any) -> list[Any]:
    """The image tensors / arrays / specs of ``x``: ``x`` itself, or a dict's ``images``
    and ``next_images`` (a ``pair_with_future`` element); other dicts: none."""
    if isinstance(x, dict):
        return [x[key] for key in (IMAGES, NEXT_IMAGES) if key in x]
    return [x]


def _tensorflow() -> Any:
    """TensorFlow if this process imported it (else nothing here can be a TF object:
    a JAX run never imports it for these checks)."""
    return sys.modules.get("tensorflow")


def is_dataset(x: Any) -> bool:
    """True for a ``tf.data.Dataset`` (False without TensorFlow imported)."""
    tf = _tensorflow()
    return tf is not None and isinstance(x, tf.data.Dataset)


def dataset_inputs_spec(dataset: Any) -> Any:
    """The spec of the inputs of a dataset's elements: ``x`` of ``(x, y[, w])``, else all."""
    spec = dataset.element_spec
    return spec[0] if isinstance(spec, tuple) else spec


def _refuse(detail: str) -> None:
    raise ValueError(f"images outside [0, 1]: {detail}. {PIXEL_FIX}")


def check_pixel_range(x: Any) -> None:
    """Raise ``ValueError`` (naming the dtype or the range seen) unless the images of ``x``
    are floats in ``[0, 1]``: integer dtypes are refused (arrays, tensors and a
    ``tf.data.Dataset``'s spec), float arrays and eager tensors by their min and max;
    a float ``tf.data.Dataset`` and anything else pass unread."""
    if is_dataset(x):
        for spec in image_parts(dataset_inputs_spec(x)):
            dtype = getattr(spec, "dtype", None)
            if dtype is not None and (dtype.is_integer or dtype.is_bool):
                _refuse(f"the dataset's images are {dtype.name} (0-255 pixels?)")
        return
    tf = _tensorflow()
    for part in image_parts(x):
        if tf is not None and isinstance(part, tf.Tensor) and tf.executing_eagerly():
            part = part.numpy()
        if not isinstance(part, np.ndarray) or part.size == 0:
            continue
        if not np.issubdtype(part.dtype, np.floating):
            _refuse(
                f"the images are {part.dtype} (0-255 pixels?), values in "
                f"[{part.min()}, {part.max()}]"
            )
        low, high = float(np.min(part)), float(np.max(part))
        if low < 0.0 or high > 1.0:
            _refuse(f"the images' values lie in [{low:g}, {high:g}]")


def batch_rows_message(batch_size: int, seen: int | None, replicas: int = 1) -> str:
    """The refusal of a batch of ``seen`` rows per worker (None: not known while tracing)
    by a ConAdv built with ``batch_size`` (rows per replica), in the caller's words."""
    per_worker = batch_size * replicas
    over = f" ({replicas} replicas x {batch_size})" if replicas > 1 else ""
    fed = "a batch of another size (below)" if seen is None else f"batches of {seen} rows"
    fix = "the per-worker batch" if seen is None else seen // replicas
    return (
        f"ConAdv was built with batch_size={batch_size} (rows of every training batch per "
        f"replica: its buffer of adversarial batches holds that many) but is fed {fed}; "
        f"expected {per_worker}{over}. Batch the data with drop_remainder=True so that every "
        f"batch has {per_worker} rows, or build ConAdv with batch_size={fix} (the per-worker "
        "batch / replicas)"
    )


def static_rows(parts: list[Any]) -> int | None:
    """The static batch dimension of the first of ``parts`` (tensors or specs), or None."""
    shape = getattr(parts[0], "shape", None) if parts else None
    if shape is None or getattr(shape, "rank", len(shape)) in (None, 0):
        return None
    return shape[0]


def check_batch_rows(batch_size: int, rows: int | None, replicas: int = 1) -> None:
    """Raise ``ValueError`` (:func:`batch_rows_message`) if ``rows`` is known and is not
    ``batch_size x replicas``."""
    if rows is not None and rows != batch_size * replicas:
        raise ValueError(batch_rows_message(batch_size, rows, replicas))


__all__ = [
    "PIXEL_FIX",
    "batch_rows_message",
    "check_batch_rows",
    "check_pixel_range",
    "dataset_inputs_spec",
    "image_parts",
    "is_dataset",
    "static_rows",
]
