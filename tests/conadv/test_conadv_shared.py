"""ConAdv's shared-pass schedule (``--attack-pass shared``): one forward/backward per
micro-batch over [clean batch t+1; adversarial batch t] gives the update's weight gradient
and, from the clean rows' input gradient, the adversarial examples of batch t+1."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
from adv_large_batch.flags import ConfigError
from tests.conadv.test_conadv import (
    CE,
    EPS,
    LR,
    STEP,
    D,
    K,
    N,
    image_batches,
    linear_problem,
    np_attack,
    np_step,
    tiny_cnn,
)
from tests.tiny_bert import SingleProcess

SHARED = ConAdvConfig(method="conadv", eps=8, staleness=1, attack_pass="shared")


def shared_linear_trainer(w0, b0):
    """The linear model of tests/conadv/test_conadv.py under the shared schedule (no BN)."""
    network = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    network.layers[-1].set_weights([w0, b0])
    config = ConAdvConfig(
        method="conadv", eps=EPS, step_size=STEP, staleness=1, attack_pass="shared"
    )
    model = ConAdv(network, config, backend=SingleProcess(), batch_size=N, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=CE)
    return model


def test_shared_step_trains_on_batch_t_plus_1_and_the_buffered_examples_of_batch_t():
    """By hand (NumPy) on a linear model: step t updates on clean batch t+1 and the
    adversarial batch made at step t-1 (FGSM of batch t at theta_{t-1}; at step 0, of
    batch 0 at theta_0), and writes FGSM(theta_t; batch t+1) into the buffer."""
    xs, ys, w0, b0 = linear_problem()
    model = shared_linear_trainer(w0, b0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            kernel, bias = model.network.layers[-1].get_weights()
            seen.append((kernel, bias, model.buffer_images.numpy()[0].copy()))

    data = pair_with_future(tf.data.Dataset.from_tensor_slices((xs, ys)), 1)
    model.fit(data, epochs=1, steps_per_epoch=4, callbacks=[Record()], verbose=0, shuffle=False)

    w, b = w0.astype("float64"), b0.astype("float64")
    adversarial = np_attack(w, b, xs[0], ys[0])  # step 0: nothing buffered
    for t in range(4):
        made = np_attack(w, b, xs[t + 1], ys[t + 1])  # theta_t's gradient at batch t + 1
        w, b = np_step(w, b, xs[t + 1], adversarial, ys[t + 1], ys[t])
        kernel, bias, buffered = seen[t]
        np.testing.assert_allclose(buffered, made, atol=1e-6)
        np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5)
        adversarial = made


def shared_model(config=SHARED, micro=4):
    model = ConAdv(
        tiny_cnn(), config, micro_batch_size=micro, backend=SingleProcess(), seed=5, batch_size=8
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss=CE, metrics=["accuracy"])
    return model


def test_shared_buffer_equals_fgsm_from_an_independent_tape_through_the_main_bn():
    """One step of the CNN with split BN: the buffer holds x_{t+1} + alpha sign(g) in the
    ball, g the input gradient of the clean rows through the main BN in training mode at
    theta_t, here recomputed with a separate tape per micro-batch."""
    model = shared_model()
    data = pair_with_future(image_batches(3), 1)
    weights = [v.numpy().copy() for v in model.network.weights]
    element = next(iter(data))
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    (x, _), reference = element, tiny_cnn()
    reference.set_weights(weights)
    nxt, labels = x["next_images"].numpy(), x["next_labels"].numpy()
    eps, step = SHARED.eps_unit, SHARED.step_unit
    expected = []
    for i in range(0, 8, 4):
        clean = tf.constant(nxt[i : i + 4])
        with tf.GradientTape() as tape:
            tape.watch(clean)
            loss = CE(labels[i : i + 4], reference(clean, training=True))  # main BN, batch stats
        g = tape.gradient(loss, clean).numpy()
        expected.append(np.clip(np.clip(nxt[i : i + 4] + step * np.sign(g), nxt[i : i + 4] - eps,
                                        nxt[i : i + 4] + eps), 0, 1))  # fmt: skip
    np.testing.assert_allclose(model.buffer_images.numpy()[0], np.concatenate(expected), atol=1e-6)
    np.testing.assert_array_equal(model.buffer_labels.numpy()[0], labels)
    assert 0 < np.abs(model.buffer_images.numpy()[0] - nxt).max() <= eps + 1e-6


def forward_convolutions(graph):
    """(op, function) of every forward Conv2D of the traced step, functions included."""
    found = [(op, None) for op in graph.get_operations() if op.type == "Conv2D"]
    for name, function in graph._functions.items():
        found += [(op, name) for op in function.graph.get_operations() if op.type == "Conv2D"]
    return found


def traced(config):
    model = shared_model(config)
    data = pair_with_future(image_batches(3), 1)
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    return tf.function(model.train_step).get_concrete_function(data.element_spec).graph


def test_shared_step_has_one_forward_over_2b_rows_per_micro_batch():
    """The separate schedule also runs the network on the next batch's clean rows (its
    PGD attack); the shared one does not: besides the step-0 fallback, its only forward
    pass is the update's, over 2 x 4 rows per micro-batch."""
    counts = {}
    for schedule in ("separate", "shared"):
        config = ConAdvConfig(method="conadv", eps=8, staleness=1, attack_pass=schedule)
        convs = forward_convolutions(traced(config))
        outside_fallback = [
            (op, fn) for op, fn in convs if "current_batch_attack" not in (fn or "") + op.name
        ]
        counts[schedule] = outside_fallback
    shared_rows = {op.inputs[0].shape[0] for op, _ in counts["shared"]}
    assert len(counts["shared"]) == 1 and shared_rows == {8}, counts["shared"]
    assert len(counts["separate"]) > len(counts["shared"])


def test_shared_schedule_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="needs --staleness 1"):
        ConAdvConfig(method="conadv", staleness=2, attack_pass="shared")
    with pytest.raises(ConfigError, match="is a ConAdv schedule"):
        ConAdvConfig(method="disadv", attack_pass="shared")
    with pytest.raises(ConfigError, match="one gradient"):
        ConAdvConfig(method="conadv", steps=2, attack_pass="shared")
    with pytest.raises(ConfigError, match="--attack-pass must be one of"):
        ConAdvConfig(attack_pass="both")


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_shared_pass_under_mixed_precision(precision):
    """Half-precision compute (weights float32; float16 adds loss scaling): the loss stays
    finite, the weights move, and the buffered examples are images in the eps ball of
    the next batch (the input gradient of a loss-scaled backward only changes by a
    positive factor, which the sign ignores)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = shared_model()
        before = [v.numpy().copy() for v in model.network.trainable_variables]
        data = pair_with_future(image_batches(4), 1)
        element = list(data.as_numpy_iterator())[2]
        history = model.fit(data, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert np.isfinite(history.history["loss"][0])
    assert any(
        np.abs(a - b.numpy()).max() > 0 for a, b in zip(before, model.network.trainable_variables)
    )
    buffered = model.buffer_images.numpy()[0]
    nxt = element[0]["next_images"]
    assert buffered.dtype == np.float32 and 0.0 <= buffered.min() and buffered.max() <= 1.0
    assert np.abs(buffered - nxt).max() <= SHARED.eps_unit + 1e-3
    assert np.abs(buffered - nxt).max() > 0.5 * SHARED.eps_unit
