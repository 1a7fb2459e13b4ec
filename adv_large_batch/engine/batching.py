"""Slicing a per-replica batch into micro-batches, and gradients as dense tensors."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from adv_large_batch.optimizers.gradients import densify


def dense(gradient: Any, variable: Any) -> tf.Tensor:
    """A gradient as a dense tensor: zeros for None, IndexedSlices (embeddings) densified."""
    return tf.zeros_like(variable) if gradient is None else densify(gradient)


def batch_size_of(structure: Any) -> tf.Tensor:
    first = next(t for t in tf.nest.flatten(structure) if t is not None)
    return tf.shape(first)[0]


def static_batch_size(structure: Any) -> int | None:
    first = next(t for t in tf.nest.flatten(structure) if t is not None)
    return first.shape[0]


def slice_batch(structure: Any, start: tf.Tensor, size: Any) -> Any:
    """Rows [start, start + size) of every tensor in a nested structure (None kept)."""
    return tf.nest.map_structure(
        lambda t: None if t is None else t[start : start + size], structure
    )


def split_micro_batches(structure: Any, n: int, m: int) -> Any:
    """Every tensor of shape [n m, ...] viewed as [n, m, ...] (micro-batch i = ``[i]``)."""

    def split(t: Any) -> Any:
        return None if t is None else tf.reshape(t, tf.concat([[n, m], tf.shape(t)[1:]], 0))

    return tf.nest.map_structure(split, structure)


def micro_batch(structure: Any, i: tf.Tensor) -> Any:
    """Micro-batch ``i`` of a ``split_micro_batches`` structure (static shape [m, ...])."""
    return tf.nest.map_structure(lambda t: None if t is None else tf.gather(t, i), structure)
