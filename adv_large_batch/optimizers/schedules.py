"""Learning-rate rules: linear warm-up then linear decay to 0 (ScaLA appendix B, "a
linear learning rate decay schedule with a warm-up ratio of 0.1"), linear warm-up then
polynomial decay (LARS practice: You et al. 2017; MLPerf ResNet-50 with LARS), and
batch-size scaling of the base learning rate (ScaLA appendix C recommends ``sqrt``;
Goyal et al. 2017 ``linear``).

Step convention (as in BERT's and HuggingFace's schedules, which ScaLA used): ``step``
is the number of optimizer updates already applied (Keras passes
``optimizer.iterations``), so ``lr(0) = 0`` when there is a warm-up, ``lr(W) = peak``
and ``lr(T) = 0``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

LR_SCALING_RULES: tuple[str, ...] = ("none", "sqrt", "linear")


def scale_learning_rate(
    base_learning_rate: float, batch_size: int, base_batch_size: int, rule: str = "sqrt"
) -> float:
    """The learning rate for ``batch_size`` from one tuned at ``base_batch_size``.

    ``none``: ``base_lr``; ``sqrt``: ``base_lr * sqrt(batch / base_batch)``;
    ``linear``: ``base_lr * batch / base_batch``.

    ```python
    from adv_large_batch.optimizers import scale_learning_rate

    scale_learning_rate(5e-5, 1024, 32, "sqrt")  # 5e-5 * sqrt(32) = 2.83e-4
    ```
    """
    if rule not in LR_SCALING_RULES:
        raise ValueError(
            f"Unknown learning-rate scaling rule {rule!r}; expected one of {LR_SCALING_RULES}."
        )
    if batch_size < 1 or base_batch_size < 1:
        raise ValueError(
            "Batch sizes must be >= 1. Received: "
            f"batch_size={batch_size}, base_batch_size={base_batch_size}"
        )
    if base_learning_rate < 0:
        raise ValueError(f"base_learning_rate must be >= 0. Received: {base_learning_rate}")
    ratio = batch_size / base_batch_size
    factor = {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]
    return float(base_learning_rate) * factor


def _validate(learning_rate: float, total_steps: int, warmup_steps: int) -> None:
    if not isinstance(learning_rate, (int, float)) or learning_rate < 0:
        raise ValueError(
            f"Argument `learning_rate` must be a number >= 0. Received: {learning_rate!r}"
        )
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(
            f"Argument `total_steps` must be an integer >= 1. Received: {total_steps!r}"
        )
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(
            f"Argument `warmup_steps` must be an integer >= 0. Received: {warmup_steps!r}"
        )
    if warmup_steps > total_steps:
        raise ValueError(
            f"The warm-up ({warmup_steps} steps) is longer than training "
            f"({total_steps} steps); `warmup_steps` must be <= `total_steps`."
        )


@keras.saving.register_keras_serializable(package="adv_large_batch")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then linear
    decay to 0 at ``total_steps`` (and 0 after).

    ```python
    from adv_large_batch.optimizers import WarmupLinearDecay

    schedule = WarmupLinearDecay(learning_rate=1e-4, total_steps=100, warmup_steps=10)
    float(schedule(5))   # 5e-5: half-way through the warm-up
    float(schedule(55))  # 5e-5: half-way through the decay
    ```

    ``lr(s) = peak * s / W`` for ``s < W``; ``peak * max(T - s, 0) / (T - W)`` after.
    """

    def __init__(self, learning_rate: float, total_steps: int, warmup_steps: int = 0) -> None:
        _validate(learning_rate, total_steps, warmup_steps)
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        peak, warmup, total = self.learning_rate, float(self.warmup_steps), float(self.total_steps)
        warm = peak * step / max(warmup, 1.0)
        decay = peak * ops.maximum(total - step, 0.0) / max(total - warmup, 1.0)
        return ops.where(step < warmup, warm, decay)

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


@keras.saving.register_keras_serializable(package="adv_large_batch")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``learning_rate``, then polynomial decay to
    ``end_learning_rate`` at ``total_steps`` (held there after).

    ```python
    from adv_large_batch.optimizers import WarmupPolynomialDecay

    schedule = WarmupPolynomialDecay(learning_rate=8.0, total_steps=100, warmup_steps=20)
    float(schedule(60))  # 8 * (1 - 40/80)**2 = 2.0
    ```

    ``lr(s) = peak * s / W`` for ``s < W``; after,
    ``(peak - end) * (1 - min(s - W, T - W) / (T - W))**power + end``.
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        power: float = 2.0,
        end_learning_rate: float = 0.0,
    ) -> None:
        _validate(learning_rate, total_steps, warmup_steps)
        if not isinstance(power, (int, float)) or power <= 0:
            raise ValueError(f"Argument `power` must be > 0. Received: power={power!r}")
        if (
            not isinstance(end_learning_rate, (int, float))
            or not 0 <= end_learning_rate <= learning_rate
        ):
            raise ValueError(
                "Argument `end_learning_rate` must be in [0, learning_rate]. Received: "
                f"end_learning_rate={end_learning_rate!r}, learning_rate={learning_rate}"
            )
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        peak, warmup, total = self.learning_rate, float(self.warmup_steps), float(self.total_steps)
        warm = peak * step / max(warmup, 1.0)
        if total > warmup:
            progress = ops.clip((step - warmup) / (total - warmup), 0.0, 1.0)
        else:  # all warm-up: the decay phase is already over at step T
            progress = ops.ones_like(step)
        decay = (peak - self.end_learning_rate) * ops.power(1.0 - progress, self.power)
        return ops.where(step < warmup, warm, decay + self.end_learning_rate)

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
        }


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate ``optimizer`` applies at its next step, as a float, computed
    from a host copy of its step counter.

    Reading ``optimizer.learning_rate`` evaluates the schedule on the step variable
    itself; under a multi-process JAX distribution that variable spans the processes, so
    the schedule's ops become programs every process must run, and a log line only the
    chief prints deadlocks the job.  Here the counter is copied to the host first (each
    process holds all of it) and the schedule runs on that copy, on this process alone.
    """
    step = keras.ops.convert_to_numpy(optimizer.iterations.value)
    with keras.StatelessScope(state_mapping=[(optimizer.iterations, step)]):
        rate = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(rate))
