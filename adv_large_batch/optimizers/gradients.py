"""Gradients as the optimizers and the engine take them: dense tensors.

Here, in the lowest layer that needs it (``optimizers/layerwise.py`` casts every gradient
dense), so ``engine/`` (micro-batch accumulation, the all-reduce) imports it downward.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def densify(gradient: Any) -> Any:
    """``tf.IndexedSlices`` (an embedding lookup's gradient) as a dense tensor; anything else
    as it is."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


__all__ = ["densify"]
