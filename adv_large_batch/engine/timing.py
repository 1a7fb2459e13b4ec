"""Step timing inside the compiled step: ``tf.timestamp`` ops ordered by explicit control
dependencies, kept out of TensorFlow's automatic control-dependency chain.

``step_time_s`` is the wall time of one ``train_step`` (input pipeline and callbacks
excluded); ``adv_time_s`` the part a method spends making perturbations, bracketed by
``timed`` and recorded in the step's ``StepLog``.  For a method whose attack runs before
the update (ScaLA, DisAdv) the update's share is ``step_time_s - adv_time_s``; ConAdv's
next-batch attack overlaps the update, so there the two add up to more than
``step_time_s`` by the overlap obtained.  Both are 0 under XLA (``tf.timestamp`` has no
XLA kernel).  Cost: two timestamps, a few identities and a subtraction per region.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import tensorflow as tf

from adv_large_batch import keras_internals

T = TypeVar("T")


# ---- timing inside the compiled step ---------------------------------------------------------
def can_time() -> bool:
    """False under XLA, which has no kernel for ``tf.timestamp`` (checked while tracing),
    and under op determinism (``TF_DETERMINISTIC_OPS=1``), which refuses it: such runs log
    no ``step_time_s`` / ``adv_time_s``."""
    return not keras_internals.op_determinism_enabled() and not keras_internals.in_xla_context()


def timestamp() -> tf.Tensor:
    """``tf.timestamp()`` outside TensorFlow's automatic control-dependency chain.

    A timestamp is a stateful op without a resource input, and inside ``tf.function``
    such ops are chained in program order -- across MirroredStrategy replicas too, which
    are traced one after the other, so replica 1's step would wait for replica 0's
    timestamps and so for its whole step.  ``run_independently`` takes the op out of
    that chain (it still runs); its order comes only from the explicit control
    dependencies of ``released_after`` / ``seconds_since``.
    """
    stamp = tf.timestamp()
    keras_internals.run_independently(stamp.op)
    return stamp


def released_after(start: tf.Tensor, structure: Any) -> Any:
    """``structure`` with every tensor replaced by an identity that runs after ``start``.

    Everything computed from the returned tensors therefore starts after ``start``.
    """
    with tf.control_dependencies([start]):
        return tf.nest.map_structure(lambda t: tf.identity(t) if tf.is_tensor(t) else t, structure)


def seconds_since(start: tf.Tensor, *after: Any) -> tf.Tensor:
    """float32 seconds from ``start`` to a ``tf.timestamp()`` that runs once every
    tensor in ``after`` exists."""
    done = [t for t in tf.nest.flatten(after) if tf.is_tensor(t)]
    with tf.control_dependencies(done):
        end = timestamp()
    return tf.cast(end - start, tf.float32)


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, tf.Tensor]:
    """``(fn(*args), seconds)``: the wall time from before ``args`` are released to
    ``fn`` until every tensor it returns exists (0 where ``can_time`` is False).

    Only work reached from ``args`` is inside the bracket: pass the region's data
    inputs as ``args`` (cheap identities) and close over the rest.
    """
    if not can_time():
        return fn(*args), tf.constant(0.0)
    start = timestamp()
    out = fn(*released_after(start, args))
    return out, seconds_since(start, out)


class StepLog:
    """Per-step scalars recorded while one ``train_step`` is traced: seconds of
    adversarial work and the count of micro-batches whose loss was not finite.

    Per graph: a ``tf.while_loop`` body opens its own ``scope`` and its totals leave
    the loop as loop variables (``totals``).
    """

    FIELDS = ("adv_seconds", "nonfinite_losses")

    def __init__(self) -> None:
        self._open: list[dict[str, list[tf.Tensor]]] = [self._empty()]

    def _empty(self) -> dict[str, list[tf.Tensor]]:
        return {name: [] for name in self.FIELDS}

    def record(self, name: str, value: tf.Tensor) -> None:
        self._open[-1][name].append(tf.cast(value, tf.float32))

    @contextlib.contextmanager
    def scope(self) -> Iterator[dict[str, list[tf.Tensor]]]:
        self._open.append(self._empty())
        try:
            yield self._open[-1]
        finally:
            self._open.pop()

    def reset(self) -> None:
        self._open = [self._empty()]

    def total(self, name: str) -> tf.Tensor:
        return sum_of(self._open[-1][name])


def sum_of(entries: list[tf.Tensor]) -> tf.Tensor:
    return tf.add_n(entries) if entries else tf.constant(0.0)


def totals(recorded: dict[str, list[tf.Tensor]]) -> tuple[tf.Tensor, ...]:
    """The recorded scalars of a scope, one sum per ``StepLog.FIELDS`` entry."""
    return tuple(sum_of(recorded[name]) for name in StepLog.FIELDS)
