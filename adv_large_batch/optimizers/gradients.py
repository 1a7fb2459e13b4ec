"""Gradients as the optimizers and the engine take them: dense tensors.

Here, in the lowest layer that needs it (``optimizers/layerwise.py`` casts every gradient
dense), so ``engine/`` (micro-batch accumulation, the all-reduce) imports it downward.
"""

from __future__ import annotations

import sys
from typing import Any


def densify(gradient: Any) -> Any:
    """``tf.IndexedSlices`` (an embedding lookup's gradient) as a dense tensor; anything else
    as it is (on the JAX backend every gradient is dense, and TensorFlow is not imported)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


__all__ = ["densify"]
