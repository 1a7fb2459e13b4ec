"""ConAdv against independently computed numbers (issue 14, item 6).

* The attack sees the *auxiliary* BN in training mode (the batch statistics of the
  micro-batch being attacked, the auxiliary gamma/beta) and leaves every BN's moving
  statistics bit-identical.
* ConAdv under mixed precision (``mixed_bfloat16``, ``mixed_float16``) with split BN.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
from adv_large_batch.models.split_batchnorm import SplitBatchNormalization, split_bn_layers
from tests.tiny_bert import SingleProcess

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BN_EPS = 1e-3
EPS_PX = 8.0  # radius = step (pixels), no random start: x_adv = x + eps * sign(grad)


def tiny_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = SplitBatchNormalization(momentum=0.9, epsilon=BN_EPS, name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def bn_statistics(network):
    return [
        v.numpy().copy()
        for layer in split_bn_layers(network)
        for norm in (layer.main_norm, layer.aux_norm)
        for v in (norm.moving_mean, norm.moving_variance)
    ]


def by_hand_loss(network, x, y, norm, batch_statistics):
    """The network's cross-entropy written out with TF ops: conv -> BN (``norm``'s gamma and
    beta; the batch's moments, or ``norm``'s moving averages) -> ReLU -> mean -> dense."""
    kernel, bias = (v.value for v in network.get_layer("conv").weights)
    h = tf.nn.conv2d(x, kernel, 1, "SAME") + bias
    if batch_statistics:
        mean, variance = tf.nn.moments(h, axes=[0, 1, 2])
    else:
        mean, variance = norm.moving_mean.value, norm.moving_variance.value
    h = norm.gamma.value * (h - mean) / tf.sqrt(variance + BN_EPS) + norm.beta.value
    h = tf.reduce_mean(tf.nn.relu(h), axis=[1, 2])
    w, b = (v.value for v in network.get_layer("head").weights)
    logits = h @ w + b
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))


def expected_attack(network, x, y, norm, batch_statistics):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = by_hand_loss(network, x, y, norm, batch_statistics)
    grad = tape.gradient(loss, x).numpy()
    eps = EPS_PX / 255.0
    x = x.numpy()
    return np.clip(np.clip(x + eps * np.sign(grad), x - eps, x + eps), 0, 1), grad


def test_attack_uses_the_auxiliary_bn_in_training_mode_and_keeps_every_statistic():
    network = tiny_cnn()
    (layer,) = split_bn_layers(network)
    rng = np.random.default_rng(4)
    # Two different BNs, and moving averages far from any batch's moments.
    for norm, gamma, beta, mean, var in (
        (layer.main_norm, 1.0, 0.0, 0.3, 2.0),
        (layer.aux_norm, -2.5, 0.7, -1.0, 0.05),
    ):
        norm.set_weights(
            [
                gamma + 0.1 * rng.normal(size=4),
                beta + 0.1 * rng.normal(size=4),
                mean + 0.1 * rng.normal(size=4),
                var * (1 + 0.1 * rng.random(4)),
            ]
        )
    config = ConAdvConfig(method="disadv", eps=EPS_PX, step_size=EPS_PX, random_init=False)
    model = ConAdv(network, config, backend=SingleProcess(), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=CE)
    x = tf.constant(rng.uniform(0.2, 0.8, (8, 6, 6, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, 3, 8).astype("int32"))

    before = bn_statistics(network)
    weights_before = [v.numpy().copy() for v in network.weights]
    got = model.attack(x, y, model.weights_snapshot(), tf.constant([1, 2])).numpy()
    after = bn_statistics(network)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # no BN statistic moved, bit for bit
    for a, b in zip(weights_before, network.weights):
        np.testing.assert_array_equal(a, b.numpy())

    want, grad = expected_attack(network, x, y, layer.aux_norm, batch_statistics=True)
    clear = np.abs(grad) > 1e-6 * np.abs(grad).max()  # pixels whose sign is not rounding noise
    assert clear.mean() > 0.9
    np.testing.assert_allclose(got[clear], want[clear], rtol=0, atol=1e-6)
    # The alternatives the attack must not be: main BN, or either BN's moving averages.
    for norm, batch_statistics in (
        (layer.main_norm, True),
        (layer.main_norm, False),
        (layer.aux_norm, False),
    ):
        other, _ = expected_attack(network, x, y, norm, batch_statistics)
        assert np.mean(np.abs(other - want) > 1e-6) > 0.05, (norm.name, batch_statistics)


def test_conadv_train_step_moves_only_the_trained_statistics():
    """One ConAdv step (tau = 1; the first step falls back to DisAdv): the attacks of the
    current and the next batch move no statistic; the update moves the main BN's by the
    clean half's moments and the auxiliary BN's by the adversarial half's."""
    network = tiny_cnn(seed=1)
    config = ConAdvConfig(method="conadv", eps=EPS_PX, staleness=1, random_init=False)
    model = ConAdv(network, config, backend=SingleProcess(), seed=0, batch_size=8)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=CE)  # lr 0: weights stay theta_0
    rng = np.random.default_rng(5)
    xs = rng.uniform(0.1, 0.9, (2, 8, 6, 6, 1)).astype("float32")
    ys = rng.integers(0, 3, (2, 8)).astype("int32")
    data = pair_with_future(tf.data.Dataset.from_tensor_slices((xs, ys)), 1)
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    (layer,) = split_bn_layers(network)

    # The adversarial rows the update trained on: DisAdv's attack of batch 0 with theta_0.
    adv0, _ = expected_attack(
        network, tf.constant(xs[0]), tf.constant(ys[0]), layer.aux_norm, batch_statistics=True
    )
    conv = network.get_layer("conv")

    def moments(images):
        h = conv(tf.constant(images)).numpy()
        return h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))

    for norm, images in ((layer.main_norm, xs[0]), (layer.aux_norm, adv0)):
        mean, var = moments(images)
        np.testing.assert_allclose(norm.moving_mean.numpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            norm.moving_variance.numpy(), 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6
        )
    # The buffered examples of batch 1 are theta_0's aux-BN attack on it.
    adv1, grad1 = expected_attack(
        network, tf.constant(xs[1]), tf.constant(ys[1]), layer.aux_norm, batch_statistics=True
    )
    clear = np.abs(grad1) > 1e-6 * np.abs(grad1).max()
    np.testing.assert_allclose(model.buffer_images.numpy()[0][clear], adv1[clear], atol=1e-6)


# ---- mixed precision --------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_conadv_split_bn_under_mixed_precision(policy):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        network = tiny_cnn(seed=2)
        assert split_bn_layers(network)[0].compute_dtype == policy.split("_")[1]
        eps_px = 8.0
        config = ConAdvConfig(method="conadv", eps=eps_px, staleness=1)
        model = ConAdv(
            network, config, micro_batch_size=4, backend=SingleProcess(), seed=3, batch_size=8
        )
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=CE)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        rng = np.random.default_rng(6)
        steps = 3
        xs = rng.uniform(0.0, 1.0, (steps + 1, 8, 6, 6, 1)).astype("float32")
        ys = rng.integers(0, 3, (steps + 1, 8)).astype("int32")
        data = pair_with_future(tf.data.Dataset.from_tensor_slices((xs, ys)), 1)
        before = [v.numpy().astype("float32") for v in network.trainable_variables]
        stats_before = bn_statistics(network)
        history = model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        logs = history.history
        assert np.isfinite(logs["loss"][0]) and np.isfinite(logs["adv_loss"][0])
        assert logs["nonfinite_steps"][0] == 0.0
        assert logs["stale_fraction"][0] == pytest.approx(2 / 3)  # step 0: DisAdv fallback
        moved = [
            np.abs(v.numpy().astype("float32") - b).max()
            for v, b in zip(network.trainable_variables, before)
        ]
        assert max(moved) > 1e-3
        assert all(np.isfinite(v.numpy().astype("float32")).all() for v in network.weights)
        for a, b in zip(stats_before, bn_statistics(network)):
            assert np.isfinite(b).all() and np.abs(a - b).max() > 0  # trained statistics move
        # The buffer: float32, the attack on batch `steps` (the last future batch), inside
        # [0, 1] and the eps ball around it, and really perturbed (not the clean images).
        buffer = model.buffer_images.numpy()[0]
        assert model.buffer_images.dtype == "float32"
        np.testing.assert_array_equal(model.buffer_labels.numpy()[0], ys[steps])
        eps = eps_px / 255.0
        distance = np.abs(buffer - xs[steps])
        assert buffer.min() >= 0.0 and buffer.max() <= 1.0
        assert distance.max() <= eps + 1e-6
        # Random start + one signed step of eps, clipped: most pixels sit at the boundary.
        assert np.mean(distance > eps - 1e-6) > 0.4
        assert logs["perturbation_linf_px"][0] == pytest.approx(eps_px, rel=1e-3)
    finally:
        keras.mixed_precision.set_global_policy(previous)
