"""Learning-rate schedules and batch-size scaling rules.

Expected values are plain-Python transcriptions of the docstring formulas or hand
arithmetic, evaluated independently of the Keras implementation.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.optimizers import (
    LAMB,
    OptimizerConfig,
    WarmupLinearDecay,
    WarmupPolynomialDecay,
    build_optimizer,
    scale_learning_rate,
)
from adv_large_batch.optimizers.factory import build_schedule
from adv_large_batch.optimizers.schedules import current_learning_rate


def value(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def reference_linear(peak, total, warmup, step):
    if step < warmup:
        return peak * step / warmup
    return peak * max(total - step, 0) / (total - warmup)


def reference_poly(peak, total, warmup, power, end, step):
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return (peak - end) * (1 - progress) ** power + end


def test_warmup_linear_decay_at_known_steps():
    schedule = WarmupLinearDecay(1e-4, total_steps=100, warmup_steps=10)
    # By hand: 0 at step 0, half-way up at 5, peak at 10, half-way down at 55, 0 at the end.
    assert value(schedule, 0) == 0.0
    assert value(schedule, 5) == pytest.approx(5e-5)
    assert value(schedule, 10) == pytest.approx(1e-4)
    assert value(schedule, 55) == pytest.approx(5e-5)
    assert value(schedule, 100) == 0.0
    assert value(schedule, 150) == 0.0
    for step in range(0, 120, 7):
        assert value(schedule, step) == pytest.approx(
            reference_linear(1e-4, 100, 10, step), rel=1e-6, abs=1e-12
        )


def test_warmup_linear_decay_edge_cases():
    no_warmup = WarmupLinearDecay(2.0, total_steps=4, warmup_steps=0)
    assert [value(no_warmup, s) for s in range(5)] == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])
    all_warmup = WarmupLinearDecay(2.0, total_steps=4, warmup_steps=4)
    assert [value(all_warmup, s) for s in range(6)] == pytest.approx([0.0, 0.5, 1.0, 1.5, 0.0, 0.0])


def test_warmup_polynomial_decay_at_known_steps():
    schedule = WarmupPolynomialDecay(8.0, total_steps=100, warmup_steps=20, power=2.0)
    assert value(schedule, 10) == pytest.approx(4.0)  # half-way up
    assert value(schedule, 20) == pytest.approx(8.0)
    assert value(schedule, 60) == pytest.approx(2.0)  # 8 * (1 - 40/80)^2
    assert value(schedule, 100) == pytest.approx(0.0)
    with_end = WarmupPolynomialDecay(
        1.0, total_steps=50, warmup_steps=0, power=0.5, end_learning_rate=0.1
    )
    assert value(with_end, 0) == pytest.approx(1.0)
    assert value(with_end, 200) == pytest.approx(0.1)
    for step in range(0, 60, 3):
        assert value(with_end, step) == pytest.approx(
            reference_poly(1.0, 50, 0, 0.5, 0.1, step), rel=1e-5
        )
    for step in range(0, 110, 9):
        assert value(schedule, step) == pytest.approx(
            reference_poly(8.0, 100, 20, 2.0, 0.0, step), abs=1e-5
        )


@pytest.mark.parametrize(
    "rule, expected",
    [("none", 5e-5), ("sqrt", 5e-5 * 32**0.5), ("linear", 5e-5 * 32)],
)
def test_scale_learning_rate_rules(rule, expected):
    assert scale_learning_rate(5e-5, 1024, 32, rule) == pytest.approx(expected, rel=1e-12)


def test_scale_learning_rate_by_hand():
    assert scale_learning_rate(0.1, 4096, 256, "linear") == pytest.approx(1.6)
    assert scale_learning_rate(1e-4, 128, 32, "sqrt") == pytest.approx(2e-4)
    assert scale_learning_rate(1e-4, 8, 32, "sqrt") == pytest.approx(5e-5)  # smaller batch
    with pytest.raises(ValueError, match="cubic"):
        scale_learning_rate(1e-4, 64, 32, "cubic")
    with pytest.raises(ValueError, match="base_batch_size=0"):
        scale_learning_rate(1e-4, 64, 0, "sqrt")


@pytest.mark.parametrize(
    "schedule",
    [
        WarmupLinearDecay(3e-4, total_steps=60, warmup_steps=6),
        WarmupPolynomialDecay(
            5.0, total_steps=90, warmup_steps=9, power=1.5, end_learning_rate=0.5
        ),
    ],
)
def test_schedule_config_round_trip(schedule):
    config = schedule.get_config()
    clone = type(schedule).from_config(config)
    assert clone.get_config() == config
    revived = keras.optimizers.schedules.deserialize(
        json.loads(json.dumps(keras.optimizers.schedules.serialize(schedule)))
    )
    assert type(revived) is type(schedule)
    for step in (0, 3, 6, 30, 59, 100):
        assert value(revived, step) == pytest.approx(value(schedule, step))


def test_optimizer_follows_schedule_by_iterations():
    schedule = WarmupLinearDecay(1e-2, total_steps=10, warmup_steps=2)
    optimizer = LAMB(schedule)
    variable = keras.Variable(np.ones(3, np.float32), name="w")
    seen = []
    for _ in range(4):
        seen.append(float(optimizer.learning_rate.numpy()))
        optimizer.apply([tf.ones(3)], [variable])
    assert seen == pytest.approx([reference_linear(1e-2, 10, 2, s) for s in range(4)])


@pytest.mark.parametrize("rate", ["schedule", "constant"])
def test_current_learning_rate_is_the_rate_of_the_next_step(rate):
    """The log lines' learning rate, from a host copy of the step counter (the
    multi-process JAX case is ``tests/commands/test_finetune_jax.py``'s 2-process run)."""
    schedule = WarmupLinearDecay(1e-2, total_steps=10, warmup_steps=2)
    optimizer = LAMB(schedule if rate == "schedule" else 3e-3)
    variable = keras.Variable(np.ones(3, np.float32), name="w")
    for step in range(4):
        want = reference_linear(1e-2, 10, 2, step) if rate == "schedule" else 3e-3
        assert current_learning_rate(optimizer) == pytest.approx(want)
        optimizer.apply([tf.ones(3)], [variable])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"learning_rate": -1.0, "total_steps": 10}, "learning_rate"),
        ({"learning_rate": 1.0, "total_steps": 0}, "total_steps"),
        ({"learning_rate": 1.0, "total_steps": 10, "warmup_steps": 11}, "longer than training"),
        ({"learning_rate": 1.0, "total_steps": 10, "warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        WarmupLinearDecay(**kwargs)
    with pytest.raises(ValueError, match=words):
        WarmupPolynomialDecay(**kwargs)


def test_build_schedule_from_config():
    config = OptimizerConfig(schedule="warmup_poly", warmup_ratio=0.25, poly_power=3.0)
    schedule = build_schedule(config, 2.0, total_steps=10)
    assert isinstance(schedule, WarmupPolynomialDecay)
    assert schedule.warmup_steps == math.ceil(0.25 * 10) == 3 and schedule.power == 3.0
    assert build_schedule(OptimizerConfig(schedule="constant"), 2.0, 10) == 2.0
    explicit = build_schedule(OptimizerConfig(warmup_steps=4), 1.0, total_steps=10)
    assert explicit.warmup_steps == 4
    no_warmup = build_schedule(OptimizerConfig(warmup_ratio=0.0), 1.0, total_steps=10)
    assert no_warmup.warmup_steps == 0 and value(no_warmup, 0) == 1.0


def test_build_optimizer_peak_lr_uses_scaling_rule():
    for rule, factor in (("none", 1.0), ("sqrt", 4.0), ("linear", 16.0)):
        config = OptimizerConfig(lr=1e-4, base_batch_size=32, lr_scaling=rule, warmup_ratio=0.0)
        optimizer = build_optimizer(config, total_steps=50, global_batch_size=512)
        assert float(optimizer.learning_rate.numpy()) == pytest.approx(1e-4 * factor)
