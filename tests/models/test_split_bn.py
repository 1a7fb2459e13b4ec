"""Split BatchNorm: routing, separate statistics, inference, serialisation, conversion, models."""

import keras
import numpy as np
import pytest

from adv_large_batch.flags import ConfigError
from adv_large_batch.models.image_models import build_image_model
from adv_large_batch.models.split_batchnorm import (
    SplitBatchNormalization,
    convert_to_split_bn,
    split_bn_layers,
    split_bn_route,
)

EPS, MOMENTUM = 1e-3, 0.9
to_numpy = keras.ops.convert_to_numpy


def numpy_bn(x, mean, var, gamma=1.0, beta=0.0):
    return gamma * (x - mean) / np.sqrt(var + EPS) + beta


def stats(x):
    """Per-channel mean and biased variance over every axis but the last (as BN)."""
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes), x.var(axis=axes)


def two_populations(n_clean=4, n_adv=4, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.normal(0.0, 1.0, (n_clean, 3, 3, 2))
    adv = rng.normal(5.0, 3.0, (n_adv, 3, 3, 2))
    return clean, adv


def weights_of(norm):
    return {v.name: v.numpy() for v in norm.weights}


@pytest.mark.parametrize("num_clean", [None, 3])
def test_split_route_uses_and_updates_separate_statistics(num_clean):
    clean, adv = two_populations(n_clean=4 if num_clean is None else num_clean, n_adv=4)
    layer = SplitBatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    batch = np.concatenate([clean, adv]).astype("float32")
    with split_bn_route(layer, "split", num_clean=num_clean):
        out = to_numpy(layer(batch, training=True))
    (mc, vc), (ma, va) = stats(clean), stats(adv)
    n = len(clean)
    np.testing.assert_allclose(out[:n], numpy_bn(clean, mc, vc), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[n:], numpy_bn(adv, ma, va), rtol=1e-4, atol=1e-4)
    # Moving averages: m * old + (1 - m) * batch statistic, old = (0, 1).
    main, aux = weights_of(layer.main_norm), weights_of(layer.aux_norm)
    np.testing.assert_allclose(main["moving_mean"], (1 - MOMENTUM) * mc, rtol=1e-5)
    np.testing.assert_allclose(main["moving_variance"], MOMENTUM + (1 - MOMENTUM) * vc, rtol=1e-5)
    np.testing.assert_allclose(aux["moving_mean"], (1 - MOMENTUM) * ma, rtol=1e-5)
    np.testing.assert_allclose(aux["moving_variance"], MOMENTUM + (1 - MOMENTUM) * va, rtol=1e-5)
    assert layer.route == "main" and layer.num_clean is None  # restored on exit


def test_whole_batch_routes_touch_only_their_bn():
    clean, adv = two_populations()
    layer = SplitBatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    layer(clean.astype("float32"), training=True)  # default route: main
    untouched_aux = weights_of(layer.aux_norm)
    np.testing.assert_allclose(untouched_aux["moving_mean"], 0.0)
    main_before = weights_of(layer.main_norm)
    with split_bn_route(layer, "aux"):
        out = to_numpy(layer(adv.astype("float32"), training=True))
    np.testing.assert_allclose(out, numpy_bn(adv, *stats(adv)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        weights_of(layer.aux_norm)["moving_mean"], (1 - MOMENTUM) * stats(adv)[0], rtol=1e-5
    )
    for name, value in weights_of(layer.main_norm).items():
        np.testing.assert_array_equal(value, main_before[name])


@pytest.mark.parametrize("route", ["main", "aux", "split"])
def test_inference_uses_the_main_bn_only(route):
    clean, _ = two_populations()
    layer = SplitBatchNormalization(epsilon=EPS)
    layer.build(clean.shape)
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    gamma, beta = np.array([1.5, 0.5]), np.array([0.1, -0.2])
    layer.main_norm.set_weights([gamma, beta, mean, var])
    layer.aux_norm.set_weights([np.full(2, 100.0), np.full(2, 7.0), np.full(2, 50.0), np.ones(2)])
    with split_bn_route(layer, route):
        out = to_numpy(layer(clean.astype("float32"), training=False))
    np.testing.assert_allclose(out, numpy_bn(clean, mean, var, gamma, beta), rtol=1e-4, atol=1e-5)


def small_bn_model(split):
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    norm = SplitBatchNormalization if split else keras.layers.BatchNormalization
    x = norm(momentum=MOMENTUM, epsilon=EPS, name="the_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x))


def test_config_round_trip_and_model_save_load(tmp_path):
    layer = SplitBatchNormalization(axis=-1, momentum=0.8, epsilon=1e-4, gamma_initializer="zeros")
    config = layer.get_config()
    assert SplitBatchNormalization.from_config(config).get_config() == config
    assert config["momentum"] == 0.8 and config["epsilon"] == 1e-4

    keras.utils.set_random_seed(1)
    model = small_bn_model(split=True)
    x = np.random.default_rng(0).random((8, 6, 6, 2)).astype("float32")
    with split_bn_route(model, "split"):
        model(x, training=True)  # both BNs get their own statistics
    path = str(tmp_path / "split.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    (bn,) = split_bn_layers(loaded)
    assert bn.get_config() == model.get_layer("the_bn").get_config()
    for a, b in zip(model.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), rtol=1e-6)


def test_convert_to_split_bn_copies_weights_into_both_bns():
    keras.utils.set_random_seed(2)
    original = small_bn_model(split=False)
    rng = np.random.default_rng(3)
    bn = original.get_layer("the_bn")
    bn_weights = [rng.random(3) + 0.5, rng.normal(size=3), rng.normal(size=3), rng.random(3) + 0.5]
    bn.set_weights(bn_weights)
    converted = convert_to_split_bn(original)

    assert isinstance(original.get_layer("the_bn"), keras.layers.BatchNormalization)
    split = converted.get_layer("the_bn")
    assert isinstance(split, SplitBatchNormalization)
    assert not any(type(layer) is keras.layers.BatchNormalization for layer in converted.layers)
    for norm in (split.main_norm, split.aux_norm):
        for got, want in zip(norm.get_weights(), bn_weights):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(
        converted.layers[1].get_weights()[0], original.layers[1].get_weights()[0]
    )
    x = rng.random((5, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(original(x)), rtol=1e-5)
    with split_bn_route(converted, "aux"):
        train_out = to_numpy(converted(x, training=True))
    np.testing.assert_allclose(train_out, to_numpy(original(x, training=True)), rtol=1e-5)


def count_bn(model):
    return sum(type(layer) is keras.layers.BatchNormalization for layer in model._flatten_layers())


def without_dropout(model):
    """Rate 0 for every dropout layer (EfficientNet's stochastic depth and top dropout), so
    a training-mode pass is deterministic and two models can be compared in it."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def test_efficientnet_b0_from_keras_applications_is_converted():
    plain = build_image_model("efficientnet_b0", (32, 32, 3), 7, split_bn=False)
    rng = np.random.default_rng(0)
    norms = [
        layer for layer in plain._flatten_layers() if type(layer) is keras.layers.BatchNormalization
    ]
    for bn in norms:  # statistics and affine parameters that inference depends on
        c = bn.gamma.shape[0]
        bn.set_weights(
            [
                rng.uniform(0.5, 1.5, c),
                rng.normal(0, 0.1, c),
                rng.normal(0, 0.1, c),
                rng.uniform(0.5, 2.0, c),
            ]
        )
    split = without_dropout(convert_to_split_bn(plain))
    without_dropout(plain)
    n_bn = len(norms)
    assert n_bn > 40  # stem, top and every MBConv block's BNs
    assert len(split_bn_layers(split)) == n_bn
    assert count_bn(split) == 2 * n_bn  # only the main/aux sublayers remain
    x = rng.random((4, 32, 32, 3)).astype("float32")
    # Inference: the converted model is the original (main BN = the original BN).
    expected = to_numpy(plain(x, training=False))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(to_numpy(split(x, training=False)), expected, rtol=1e-4, atol=1e-5)
    # Training, split route on [x; x]: each half is normalised by its own batch moments with
    # the original gamma/beta (both BNs start as copies), i.e. the original in training mode.
    with split_bn_route(split, "split"):
        out = to_numpy(split(np.concatenate([x, x]), training=True))
    trained = to_numpy(plain(x, training=True))
    assert out.shape == (8, 7) and np.abs(trained - expected).max() > 1e-3
    np.testing.assert_allclose(out[:4], trained, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out[4:], trained, rtol=1e-3, atol=1e-4)


def test_cifar_resnet8_has_the_hand_counted_weights():
    """ResNet-8 = stem + one basic block per stage (16, 32, 64 filters), 1x1 projections."""
    model = build_image_model("cifar_resnet8", (28, 28, 1), 10, split_bn=True, width=16)
    convs = 9 * 1 * 16 + 2 * 9 * 16 * 16
    convs += 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32
    convs += 9 * 32 * 64 + 9 * 64 * 64 + 32 * 64
    bn_channels = 16 + (16 + 16) + (32 + 32 + 32) + (64 + 64 + 64)
    dense = 64 * 10 + 10
    trainable = convs + 2 * 2 * bn_channels + dense  # (gamma, beta) x (main, aux)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == trainable
    assert len(split_bn_layers(model)) == 9


def test_resnet18_and_mixed_precision_policy():
    assert build_image_model("resnet18", (32, 32, 3), 5).output_shape == (None, 5)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_image_model("cifar_resnet8", (28, 28, 1), 10, width=4)
        x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
        with split_bn_route(model, "split"):
            logits = model(x, training=True)
        assert logits.dtype == "float32"
        assert split_bn_layers(model)[0].compute_dtype == "float16"
        assert split_bn_layers(model)[0].main_norm.moving_mean.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "efficientnet_b0"])
def test_too_small_images_are_rejected_before_building(name):
    with pytest.raises(
        ConfigError, match=f"--model {name} needs images of at least 32x32, got 28x28"
    ):
        build_image_model(name, (28, 28, 1), 10)


def test_one_pass_split_equals_the_two_sublayers_on_the_halves_with_gradients():
    """The equal-halves fast path (one op over [2, B/2, ...]) gives what slicing the batch
    into the two BNs gives: outputs, input and gamma/beta gradients, moving averages."""
    import tensorflow as tf

    clean, adv = two_populations(n_clean=6, n_adv=6, seed=3)
    batch = tf.constant(np.concatenate([clean, adv]).astype("float32"))
    rng = np.random.default_rng(7)

    def make():
        layer = SplitBatchNormalization(momentum=MOMENTUM, epsilon=EPS)
        layer.build(batch.shape)
        for bn, shift in ((layer.main_norm, 0.0), (layer.aux_norm, 1.0)):
            bn.gamma.assign(rng.uniform(0.5, 1.5, 2).astype("float32") + shift)
            bn.beta.assign(rng.normal(0.0, 1.0, 2).astype("float32"))
        return layer

    fast, ref = make(), make()
    for a, b in zip(ref.weights, fast.weights):
        a.assign(b)
    weight = tf.constant(rng.normal(size=batch.shape).astype("float32"))

    def run(fn, layer):
        with tf.GradientTape() as tape:
            tape.watch(batch)
            out = fn(layer)
            loss = tf.reduce_sum(out * weight)
        params = [layer.main_norm.gamma, layer.main_norm.beta, layer.aux_norm.gamma]
        return out, tape.gradient(loss, [batch, *params])

    def grouped(layer):
        assert layer._can_group(batch)
        with split_bn_route(layer, "split"):
            return layer(batch, training=True)

    def sliced(layer):
        return tf.concat(
            [layer.main_norm(batch[:6], training=True), layer.aux_norm(batch[6:], training=True)],
            axis=0,
        )

    out_fast, grads_fast = run(grouped, fast)
    out_ref, grads_ref = run(sliced, ref)
    np.testing.assert_allclose(to_numpy(out_fast), to_numpy(out_ref), rtol=1e-5, atol=1e-5)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        np.testing.assert_allclose(to_numpy(g_fast), to_numpy(g_ref), rtol=1e-4, atol=1e-5)
    for a, b in zip(fast.weights, ref.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
