"""Losses the training commands compile with."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="adv_large_batch")
class SmoothedSparseCrossEntropy(keras.losses.Loss):
    """Cross-entropy of logits against integer labels smoothed by ``smoothing``: the target
    is ``(1 - s) one_hot(y) + s / classes`` (Keras' sparse loss has no smoothing).

    ```python
    import numpy as np
    from adv_large_batch.engine.losses import SmoothedSparseCrossEntropy

    loss = SmoothedSparseCrossEntropy(num_classes=10, smoothing=0.1)
    value = loss(np.array([3]), np.zeros((1, 10)))
    assert np.isclose(float(value), np.log(10))  # uniform logits
    ```
    """

    def __init__(self, num_classes: int, smoothing: float = 0.1, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "smoothed_cross_entropy"), **kwargs)
        self.num_classes = int(num_classes)
        self.smoothing = float(smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), [-1])
        return keras.losses.categorical_crossentropy(
            keras.ops.one_hot(labels, self.num_classes),
            y_pred,
            from_logits=True,
            label_smoothing=self.smoothing,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "smoothing": self.smoothing,
        }


def smoothed_cross_entropy(num_classes: int, smoothing: float) -> keras.losses.Loss:
    """The image runs' loss: plain sparse cross-entropy from logits, or smoothed."""
    if not smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return SmoothedSparseCrossEntropy(num_classes, smoothing)
