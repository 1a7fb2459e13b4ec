"""Batches t and t + tau from one pass over the data (ConAdv's input stream).

``pair_with_future`` is a ``tf.data`` ``scan`` whose state carries the last tau batches:
every batch is produced (read, augmented) once and handed out twice, as the future batch
of step ``t - tau`` and as the clean batch of step ``t``.
"""

from __future__ import annotations

import tensorflow as tf

from adv_large_batch.conadv.paired_keys import IMAGES, NEXT_IMAGES, NEXT_LABELS
from adv_large_batch.flags import require


def pair_with_future(dataset: tf.data.Dataset, staleness: int) -> tf.data.Dataset:
    """``(x_t, y_t)`` -> ``({images: x_t, next_images: x_t+tau, next_labels: y_t+tau}, y_t)``.

    A ``scan`` carrying the last ``staleness`` batches: each batch is computed
    once.  The stream is ``staleness`` batches shorter (the last batches are only
    ever "future" batches); repeat the dataset first for training by steps.
    Batches need a static shape (``batch(..., drop_remainder=True)``).
    """
    require(staleness >= 1, f"--staleness must be >= 1 to pair batches, got {staleness}")
    image_spec, label_spec = dataset.element_spec
    for spec in (image_spec, label_spec):
        if not spec.shape.is_fully_defined():
            raise ValueError(
                f"pair_with_future needs batches of static shape, got {spec.shape}: batch with "
                "drop_remainder=True"
            )
    initial = (
        tf.zeros([staleness, *image_spec.shape], image_spec.dtype),
        tf.zeros([staleness, *label_spec.shape], label_spec.dtype),
        tf.constant(0, tf.int64),
    )

    def step(state: tuple, batch: tuple) -> tuple:
        images, labels, seen = state
        x, y = batch
        element = ({IMAGES: images[0], NEXT_IMAGES: x, NEXT_LABELS: y}, labels[0])
        carried = (
            tf.concat([images[1:], x[None]], axis=0),
            tf.concat([labels[1:], y[None]], axis=0),
            seen + 1,
        )
        return carried, (element, seen >= staleness)

    def is_ready(element: tuple, ready: tf.Tensor) -> tf.Tensor:
        return ready

    def drop_flag(element: tuple, ready: tf.Tensor) -> tuple:
        return element

    return dataset.scan(initial, step).filter(is_ready).map(drop_flag)
