"""mixed_float16 and the attack (issue 23, item 5).

The attack multiplies its loss by the loss scale; at too large a scale its float16 input
gradient overflows (inf / NaN).  Such an entry never reaches the examples (the pixel keeps
its start / clean value), and the overflow lowers the loss scale like any overflow (the
step is skipped by the ``LossScaleOptimizer``), without counting as a non-finite step.
Before: ``sign`` and the clip kept the NaN, the adversarial images and the buffer became
NaN, the NaN loss was counted as a non-finite step (``--on-nonfinite stop`` ended a healthy
run) and under DisAdv the scale was never lowered.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future, pgd
from adv_large_batch.engine.callbacks import NonFiniteLoss
from adv_large_batch.models.split_batchnorm import SplitBatchNormalization
from tests.conadv.test_conadv import CE, all_ancestors, image_batches, tiny_cnn, traced_step
from tests.tiny_bert import SingleProcess

EPS_PX = 8.0
SCHEDULES = {
    "disadv": ConAdvConfig(method="disadv", eps=EPS_PX),
    "separate": ConAdvConfig(method="conadv", eps=EPS_PX, staleness=1),
    "shared": ConAdvConfig(method="conadv", eps=EPS_PX, staleness=1, attack_pass="shared"),
}


# ---- the pure functions -----------------------------------------------------------------------
G = np.array([[1.0, -1.0, np.inf, np.nan, -np.inf, 0.5]], "float32")


def linear_loss(x):
    """A loss whose input gradient is exactly ``G`` (with its inf and NaN entries)."""
    return tf.reduce_sum(x * G)


def test_a_nonfinite_gradient_entry_leaves_its_pixel_at_the_start():
    x = np.full((1, 6), 0.5, "float32")
    step = eps = 4 / 255
    x_adv = pgd.pgd_attack(linear_loss, tf.constant(x), eps, step, tf.constant([1, 2]), 1, False)
    x_adv = x_adv.numpy()
    assert np.isfinite(x_adv).all()
    np.testing.assert_allclose(x_adv[0, [0, 1, 5]], 0.5 + step * np.array([1, -1, 1]), atol=1e-7)
    np.testing.assert_array_equal(x_adv[0, [2, 3, 4]], x[0, [2, 3, 4]])  # not moved
    _, count = pgd.pgd_attack_with_overflow(
        linear_loss, tf.constant(x), eps, step, tf.constant([1, 2]), 2, False
    )
    assert float(count) == 6.0  # 3 entries, 2 steps

    # With a random start the pixel keeps its start value (the ball's own point).
    seed = tf.constant([3, 4])
    start = pgd.random_start(tf.constant(x), eps, seed).numpy()
    x_adv = pgd.pgd_attack(linear_loss, tf.constant(x), eps, step, seed).numpy()
    assert np.isfinite(x_adv).all()
    np.testing.assert_array_equal(x_adv[0, [2, 3, 4]], start[0, [2, 3, 4]])

    # FGSM from the clean point (the shared pass): the clean pixel is kept.
    shared = pgd.shared_pass_examples(tf.constant(x), tf.constant(G), eps, step).numpy()
    assert np.isfinite(shared).all()
    np.testing.assert_array_equal(shared[0, [2, 3, 4]], x[0, [2, 3, 4]])
    assert float(pgd.nonfinite_entries(tf.constant(G))) == 3.0
    np.testing.assert_array_equal(pgd.nonfinite_entries(tf.constant(G), per_row=True), [3.0])


# ---- a forced overflow with every schedule --------------------------------------------------
def steep_cnn(gain=4096.0):
    """``tiny_cnn`` after a steep fixed input map ``sin(gain x)`` (Fourier features): its
    input gradient is ``gain`` times larger than anything its weights see, so under
    mixed_float16 the attack's input gradient overflows at a loss scale (2**14) at which
    the weight gradients do not (measured: weights up to 2**16, the attack up to 2**8-2**10).
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Rescaling(gain)(inputs)
    x = keras.layers.Lambda(keras.ops.sin)(x)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = SplitBatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def fp16_model(config, initial_scale, network=None):
    model = ConAdv(
        network or tiny_cnn(),
        config,
        micro_batch_size=4,
        backend=SingleProcess(),
        seed=5,
        batch_size=8 if config.buffered else None,
    )
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1), initial_scale=initial_scale
    )
    model.compile(optimizer=optimizer, loss=CE)
    return model, optimizer


class Record(keras.callbacks.Callback):
    """The loss scale, the weights and the buffer after every step."""

    def __init__(self):
        super().__init__()
        self.scales, self.weights, self.buffers = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        self.scales.append(float(model.optimizer.scale_loss(1.0)))
        self.weights.append([v.numpy().copy() for v in model.network.trainable_variables])
        if model.config.buffered:
            self.buffers.append(model.buffer_images.numpy().copy())


def fit_fp16(config, initial_scale, steps, network=None):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, optimizer = fp16_model(config, initial_scale, network() if network else None)
        data = image_batches(steps + 1)
        if config.buffered:
            data = pair_with_future(data, 1)
        record = Record()
        history = model.fit(
            data,
            epochs=1,
            steps_per_epoch=steps,
            verbose=0,
            shuffle=False,
            callbacks=[NonFiniteLoss("stop"), record],
        ).history
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model, optimizer, record, history


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_a_forced_attack_overflow_lowers_the_scale_and_the_run_recovers(schedule):
    """Initial scale 2**40: the attack's float16 input gradient (and the update's) overflow
    until the scale has come down.  The run is not stopped by ``--on-nonfinite stop``,
    no NaN reaches the examples or the buffer, the scale goes down, and once it fits the
    weights move again."""
    steps = 36
    model, optimizer, record, history = fit_fp16(SCHEDULES[schedule], 2.0**40, steps)
    assert model.stopped_nonfinite_at is None and len(record.scales) == steps
    assert history["nonfinite_steps"] == [0.0]
    assert history["attack_overflows"][0] > 0  # the attack did overflow, and was counted
    assert history["loss_scale_skips"][0] > 0
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["adv_loss"][0])
    assert np.isfinite(history["grad_norm"][0])  # the applied steps' mean, not NaN
    assert record.scales[0] == 2.0**39  # the first step's overflow halved the scale
    assert record.scales[-1] < 2.0**20
    for buffer in record.buffers:  # the examples of every step: finite images
        assert np.isfinite(buffer).all() and buffer.min() >= 0.0 and buffer.max() <= 1.0
    applied = int(optimizer.iterations.numpy())
    assert applied >= 5  # training resumed once the scale fitted ...
    last = record.weights[-1]
    moved = [np.abs(a - b).max() for a, b in zip(last, record.weights[-1 - applied // 2])]
    assert max(moved) > 1e-4  # ... and the weights keep moving
    assert all(np.isfinite(w).all() for w in last)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_an_overflow_of_the_attack_alone_lowers_the_scale(schedule):
    """At 2**14 only the attack's input gradient overflows (``steep_cnn``): the weight
    gradients are finite, yet the step is skipped by the loss scale and the scale halved,
    step after step, until the attack fits; then the steps are applied.  (Without the
    fold the scale stayed at 2**14 and every attack overflowed: attack_overflows = 1.)"""
    steps = 10
    model, optimizer, record, history = fit_fp16(SCHEDULES[schedule], 2.0**14, steps, steep_cnn)
    assert model.stopped_nonfinite_at is None and history["nonfinite_steps"] == [0.0]
    assert record.scales[0] == 2.0**13  # the attack's overflow halved the scale
    assert record.scales[-1] <= 2.0**10
    assert record.scales[-3:] == [record.scales[-1]] * 3  # the attack fits now
    assert 0 < history["attack_overflows"][0] < 0.8
    assert history["loss_scale_skips"][0] == history["attack_overflows"][0]
    assert int(optimizer.iterations.numpy()) >= 2
    moved = [np.abs(a - b).max() for a, b in zip(record.weights[-1], record.weights[-3])]
    assert max(moved) > 0
    for buffer in record.buffers:
        assert np.isfinite(buffer).all()


def test_the_next_batch_attack_overflow_lowers_the_scale_at_the_next_step():
    """The separate schedule's next-batch attack runs beside the update, which must not
    wait for it (also under mixed_float16, where its overflow is folded in): its overflow
    is kept in ``buffer_overflow`` and folded into the next step, which the loss scale
    skips (halving the scale); it is not a non-finite step."""
    config = SCHEDULES["separate"]
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        graph, weight_writes = traced_step(config)
        attack = {
            op.name for op in graph.get_operations() if op.name.startswith("next_batch_attack/")
        }
        assert attack and weight_writes
        for op in weight_writes:
            assert not (all_ancestors(op) & attack), f"{op.name} waits for the next-batch attack"

        model, optimizer = fp16_model(config, 2.0**4)  # no overflow at this scale
        model.buffer_overflow.assign(3.0)  # as if the last step's attack had overflowed
        before = [v.numpy().copy() for v in model.network.trainable_variables]
        history = model.fit(
            pair_with_future(image_batches(2), 1),
            epochs=1,
            steps_per_epoch=1,
            verbose=0,
            shuffle=False,
            callbacks=[NonFiniteLoss("stop")],
        ).history
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert history["nonfinite_steps"] == [0.0] and history["loss_scale_skips"] == [1.0]
    assert history["attack_overflows"] == [1.0]
    assert float(optimizer.scale_loss(1.0)) == 2.0**3
    assert int(optimizer.iterations.numpy()) == 0
    for a, b in zip(before, model.network.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())
    assert float(model.buffer_overflow.numpy()) == 0.0  # this step's attack did not overflow
