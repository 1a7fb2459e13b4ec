"""``block()``: importing TensorFlow fails in this process from now on (a worker's
``--no-tensorflow``, to show that the JAX path never needs it)."""

from __future__ import annotations

import importlib.abc
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked in this process")


def block() -> None:
    sys.meta_path.insert(0, _NoTensorFlow())
