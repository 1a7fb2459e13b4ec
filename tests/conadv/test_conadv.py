"""ConAdv / DisAdv / baseline: staleness, pairing, graph independence, runs, bad input."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch import cli
from adv_large_batch.commands.train_images import ImageTrainConfig, run
from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
from adv_large_batch.flags import ConfigError
from adv_large_batch.models.split_batchnorm import SplitBatchNormalization
from adv_large_batch.optimizers import image_optimizer_config
from tests.tiny_bert import SingleProcess

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ---- the input pipeline -------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1, 2])
def test_pairing_hands_out_batch_t_and_t_plus_tau_reading_each_once(tau):
    produced = []

    def record(i):
        produced.append(int(i))
        return i

    def make(i):
        i = tf.py_function(record, [i], tf.int64)
        image = tf.fill([2, 1, 1, 1], tf.cast(i, tf.float32))
        return image, tf.fill([2], tf.cast(i, tf.int32))

    batches = tf.data.Dataset.range(6).map(make)
    batches = batches.map(lambda x, y: (tf.ensure_shape(x, [2, 1, 1, 1]), tf.ensure_shape(y, [2])))
    paired = list(pair_with_future(batches, tau).as_numpy_iterator())
    assert len(paired) == 6 - tau
    for t, (x, y) in enumerate(paired):
        assert x["images"].ravel().tolist() == [t, t] and y.tolist() == [t, t]
        assert x["next_images"].ravel().tolist() == [t + tau] * 2
        assert x["next_labels"].tolist() == [t + tau] * 2
    assert produced == list(range(6))  # every batch made exactly once


# ---- staleness with weights we control ------------------------------------------------------
D, K, N, LR = 6, 3, 4, 0.5
EPS = STEP = 16.0  # pixels


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_attack(w, b, x, y):
    """1-step PGD without random start on logits x W + b, by hand: sign of (p - onehot) W^T."""
    p = np_softmax(x @ w + b)
    p[np.arange(len(y)), y] -= 1
    eps = EPS / 255
    return np.clip(np.clip(x + (STEP / 255) * np.sign(p @ w.T), x - eps, x + eps), 0, 1)


def np_grads(w, b, x, y):
    """Gradients of the mean cross-entropy."""
    p = np_softmax(x @ w + b)
    p[np.arange(len(y)), y] -= 1
    return x.T @ p / len(y), p.mean(axis=0)


def np_step(w, b, clean, adv, y, y_adv):
    """Eq. (4): SGD on (L_clean + L_adv) / 2."""
    gw_c, gb_c = np_grads(w, b, clean, y)
    gw_a, gb_a = np_grads(w, b, adv, y_adv)
    return w - LR * 0.5 * (gw_c + gw_a), b - LR * 0.5 * (gb_c + gb_a)


def linear_problem():
    rng = np.random.default_rng(11)
    xs = rng.uniform(0.2, 0.8, (5, N, D)).astype("float32")
    ys = rng.integers(0, K, (5, N)).astype("int32")
    w0 = rng.normal(0, 0.3, (D, K)).astype("float32")
    b0 = rng.normal(0, 0.1, K).astype("float32")
    return xs, ys, w0, b0


def linear_trainer(method, staleness, w0, b0):
    network = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    network.layers[-1].set_weights([w0, b0])
    config = ConAdvConfig(
        method=method, eps=EPS, step_size=STEP, staleness=staleness, random_init=False
    )
    model = ConAdv(
        network, config, backend=SingleProcess(), batch_size=N if staleness else None, seed=0
    )
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=CE)
    return model


def test_step_t_trains_on_the_adversarial_batch_made_at_t_minus_1():
    xs, ys, w0, b0 = linear_problem()
    model = linear_trainer("conadv", 1, w0, b0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            kernel, bias = model.network.layers[-1].get_weights()
            seen.append((kernel, bias, model.buffer_images.numpy()[0].copy()))

    data = pair_with_future(tf.data.Dataset.from_tensor_slices((xs, ys)), 1)
    model.fit(data, epochs=1, steps_per_epoch=4, callbacks=[Record()], verbose=0, shuffle=False)

    w, b = w0.astype("float64"), b0.astype("float64")
    made_with = {0: np_attack(w, b, xs[0], ys[0])}  # step 0: nothing buffered -> DisAdv
    staleness_matters = False
    for t in range(4):
        adv_for_next = np_attack(w, b, xs[t + 1], ys[t + 1])  # theta_t, batch t + 1
        w, b = np_step(w, b, xs[t], made_with[t], ys[t], ys[t])
        made_with[t + 1] = adv_for_next
        kernel, bias, buffered = seen[t]
        np.testing.assert_allclose(buffered, adv_for_next, atol=1e-6)
        np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5)
        fresh = np_attack(w, b, xs[t + 1], ys[t + 1])  # what DisAdv would use at step t + 1
        staleness_matters |= bool(np.abs(fresh - adv_for_next).max() > 0)
    assert staleness_matters  # the check above tells theta_t from theta_t+1 apart
    assert int(model.batches_seen.numpy()) == 4


def test_staleness_two_trains_step_t_on_the_batch_attacked_at_t_minus_2():
    """tau = 2: step t trains on the adversarial batch made at step t - 2 from theta_t-2
    (steps 0 and 1 fall back to DisAdv), and writes the attack of batch t + 2 made from
    theta_t into slot t mod 2. Expected weights and buffer from NumPy."""
    rng = np.random.default_rng(12)
    steps, tau = 5, 2
    xs = rng.uniform(0.2, 0.8, (steps + tau, N, D)).astype("float32")
    ys = rng.integers(0, K, (steps + tau, N)).astype("int32")
    w0 = rng.normal(0, 0.3, (D, K)).astype("float32")
    b0 = rng.normal(0, 0.1, K).astype("float32")
    model = linear_trainer("conadv", tau, w0, b0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            kernel, bias = model.network.layers[-1].get_weights()
            seen.append((kernel, bias, model.buffer_images.numpy().copy()))

    data = pair_with_future(tf.data.Dataset.from_tensor_slices((xs, ys)), tau)
    model.fit(data, epochs=1, steps_per_epoch=steps, callbacks=[Record()], verbose=0, shuffle=False)

    w, b = w0.astype("float64"), b0.astype("float64")
    thetas, made = [(w, b)], {}
    for t in range(steps):
        future = np_attack(w, b, xs[t + tau], ys[t + tau])  # theta_t, batch t + 2
        adv = made[t] if t >= tau else np_attack(w, b, xs[t], ys[t])
        w, b = np_step(w, b, xs[t], adv, ys[t], ys[t])
        thetas.append((w, b))
        made[t + tau] = future
        kernel, bias, buffered = seen[t]
        np.testing.assert_allclose(buffered[t % tau], future, atol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(kernel, w, rtol=1e-4, atol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(bias, b, rtol=1e-4, atol=1e-5, err_msg=f"step {t}")
    # The check tells tau = 2 from tau = 1: theta_t-1 attacks batch t + 1 differently.
    tau_one = [np_attack(*thetas[t + 1], xs[t + tau], ys[t + tau]) for t in range(steps)]
    assert any(np.abs(made[t + tau] - tau_one[t]).max() > 0 for t in range(steps))
    assert int(model.batches_seen.numpy()) == steps


def tiny_cnn(seed=0):
    """Conv (no bias: BN removes any per-channel shift, so a bias's gradient is rounding noise
    and its value differs between two equal runs by ~1e-7) -> split BN -> ReLU -> pool -> 3
    logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = SplitBatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def image_batches(n_batches=4, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_batches * batch, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, n_batches * batch).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)


def weights_after(config, steps=3, micro=4):
    model = ConAdv(
        tiny_cnn(),
        config,
        micro_batch_size=micro,
        backend=SingleProcess(),
        seed=5,
        batch_size=8 if config.buffered else None,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss=CE, metrics=["accuracy"])
    data = image_batches(steps + 1)
    if config.buffered:
        data = pair_with_future(data, config.staleness)
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return [v.numpy() for v in model.network.weights]


def test_staleness_zero_is_disadv_and_staleness_one_is_not():
    disadv = weights_after(ConAdvConfig(method="disadv", eps=8))
    tau0 = weights_after(ConAdvConfig(method="conadv", eps=8, staleness=0))
    tau1 = weights_after(ConAdvConfig(method="conadv", eps=8, staleness=1))
    baseline = weights_after(ConAdvConfig(method="baseline"))
    for a, b in zip(disadv, tau0):
        np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(disadv, tau1)) > 1e-6
    assert max(np.abs(a - b).max() for a, b in zip(disadv, baseline)) > 1e-6


# ---- the traced graph: the update never waits for the next batch's attack --------------------
def all_ancestors(op):
    """Names of every op ``op`` depends on (data and control inputs, transitively)."""
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent.name not in seen:
                seen.add(parent.name)
                stack.append(parent)
    return seen


def traced_step(config):
    model = ConAdv(
        tiny_cnn(),
        config,
        micro_batch_size=4,
        backend=SingleProcess(),
        batch_size=8 if config.buffered else None,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=CE, metrics=["accuracy"])
    data = image_batches(3)
    if config.buffered:
        data = pair_with_future(data, config.staleness)
    model.fit(
        data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False
    )  # builds optimizer and metrics
    graph = tf.function(model.train_step).get_concrete_function(data.element_spec).graph
    weight_handles = {id(v.value.handle) for v in model.network.trainable_variables}
    captured = {inner.name for outer, inner in graph.captures if id(outer) in weight_handles}
    assert len(captured) == len(weight_handles)
    # The optimizer's writes sit inside the trainer's "apply only if finite" cond, so the
    # op that writes a weight is the If op taking its handle (or a direct Assign*/Resource*).
    writes = [
        op
        for op in graph.get_operations()
        if (op.type in ("If", "StatelessIf") or op.type.startswith(("Assign", "ResourceApply")))
        and any(t.name in captured for t in op.inputs)
    ]
    written = {t.name for op in writes for t in op.inputs if t.name in captured}
    assert written == captured  # every trainable weight is written by one of them
    return graph, writes


def test_the_update_does_not_depend_on_the_next_batch_attack():
    graph, weight_writes = traced_step(ConAdvConfig(method="conadv", eps=8, staleness=1))
    attack = {op.name for op in graph.get_operations() if op.name.startswith("next_batch_attack/")}
    assert any(
        op.type in ("While", "StatelessWhile") for op in graph.get_operations() if op.name in attack
    )  # the micro-batched PGD loop is there
    assert weight_writes  # (all 8 weights: conv 2, main + aux BN gamma/beta 4, dense 2)
    for op in weight_writes:
        assert not (all_ancestors(op) & attack), f"{op.name} waits for the next-batch attack"
    # ... while the buffer write does consume it (the walk sees real dependencies):
    buffer_writes = [
        op
        for op in graph.get_operations()
        if op.name.startswith("adv_buffer_write/") and op.type == "AssignVariableOp"
    ]
    assert buffer_writes and all(all_ancestors(op) & attack for op in buffer_writes[:1])


def test_disadv_update_does_depend_on_its_attack():
    graph, weight_writes = traced_step(ConAdvConfig(method="disadv", eps=8))
    attack = {
        op.name for op in graph.get_operations() if op.name.startswith("current_batch_attack/")
    }
    assert attack and weight_writes
    assert all(all_ancestors(op) & attack for op in weight_writes)


def test_config_round_trip_and_the_buffer_is_checkpointed(tmp_path):
    config = ConAdvConfig(method="conadv", eps=8, staleness=2)
    model = ConAdv(tiny_cnn(), config, micro_batch_size=4, backend=SingleProcess(), batch_size=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=CE)
    model.fit(
        pair_with_future(image_batches(5), 2), epochs=1, steps_per_epoch=3, verbose=0, shuffle=False
    )
    assert model.buffer_images.shape == (2, 8, 6, 6, 1)
    assert np.abs(model.buffer_images.numpy()).max() > 0
    path = str(tmp_path / "conadv.weights.h5")
    model.save_weights(path)

    clone = ConAdv.from_config(model.get_config())
    assert clone.config == config and clone.batch_size == 8
    clone.load_weights(path)
    np.testing.assert_array_equal(clone.buffer_images.numpy(), model.buffer_images.numpy())
    np.testing.assert_array_equal(clone.buffer_labels.numpy(), model.buffer_labels.numpy())
    assert int(clone.batches_seen.numpy()) == 3


def test_a_trainer_config_saved_with_the_old_key_still_loads():
    """Before, the ConAdvConfig was under "config" (a config in Keras' config)."""
    config = ConAdvConfig(method="conadv", eps=8, staleness=2)
    model = ConAdv(tiny_cnn(), config, micro_batch_size=4, backend=SingleProcess(), batch_size=8)
    saved = model.get_config()
    assert saved["adversarial"]["staleness"] == 2 and "config" not in saved
    old = {k: v for k, v in saved.items() if k != "adversarial"}
    old["config"] = saved["adversarial"]
    assert ConAdv.from_config(old).config == config


# ---- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": -1}, "--adv-eps must be in [0, 255] (pixels), got -1"),
        ({"eps": 256}, "--adv-eps must be in [0, 255] (pixels), got 256"),
        ({"step_size": 300.0}, "--adv-step must be in [0, 255] (pixels), got 300.0"),
        ({"staleness": -1}, "--staleness must be >= 0, got -1"),
        ({"method": "freeadv"}, "--method must be one of"),
    ],
)
def test_bad_adversarial_config(kwargs, message):
    with pytest.raises(ConfigError) as err:
        ConAdvConfig(**kwargs)
    assert message in str(err.value)


def test_conadv_needs_a_buffer_size_and_paired_batches():
    with pytest.raises(ValueError, match="needs batch_size="):
        ConAdv(tiny_cnn(), ConAdvConfig(staleness=1), backend=SingleProcess())
    model = ConAdv(tiny_cnn(), ConAdvConfig(staleness=1), backend=SingleProcess(), batch_size=8)
    model.compile(optimizer="sgd", loss=CE)
    with pytest.raises(ValueError, match="pair_with_future"):
        model.fit(image_batches(2), epochs=1, verbose=0, shuffle=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--adv-eps", "300"], "--adv-eps must be in [0, 255] (pixels), got 300.0"),
        (["--adv-step", "-2"], "--adv-step must be in [0, 255] (pixels), got -2.0"),
        (["--staleness", "-1"], "--staleness must be >= 0, got -1"),
        (
            ["--batch-size", "100", "--micro-batch-size", "32"],
            "--batch-size 100 is not divisible by --micro-batch-size 32 x 1 worker(s) x 1 replica",
        ),
        (
            ["--model", "resnet50"],
            "--model resnet50 needs images of at least 32x32, got 28x28",
        ),
        (["--dataset", "folder"], "--dataset folder needs --data-dir"),
    ],
)
def test_bad_train_images_input_fails_before_training(args, message, capsys):
    code = cli.main(["train-images", "--verbose", "0", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_train_images_defaults_to_lars():
    args = cli.build_parser().parse_args(["train-images"])
    assert args.optimizer == "lars" and args.lr is None  # None: the LARS recipe
    finetune = cli.build_parser().parse_args(["finetune"])
    assert finetune.optimizer == "lamb"  # the text run keeps its own defaults


# ---- real runs ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_conadv_fit_on_real_fashion_mnist_beats_chance():
    result = run(
        ImageTrainConfig(
            model="cifar_resnet8",
            train_limit=4096,
            eval_limit=1000,
            epochs=2,
            batch_size=64,
            augment="none",
            verbose=0,
        ),
        ConAdvConfig(method="conadv", eps=3, staleness=1),
        image_optimizer_config(lr=8.0),
    )
    assert result["top1"] > 0.6  # chance: 0.1
    assert result["history"]["stale_fraction"][-1] == 1.0
    assert 2.5 < result["history"]["perturbation_linf_px"][-1] <= 3.0 + 1e-3


@pytest.mark.slow
def test_cli_train_images_runs_and_writes_metrics(tmp_path):
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adv_large_batch.cli",
            "train-images",
            "--model", "cifar_resnet8", "--width", "4",
            "--train-limit", "256", "--eval-limit", "64",
            "--batch-size", "64", "--micro-batch-size", "32", "--epochs", "1",
            "--method", "conadv", "--adv-eps", "4", "--staleness", "1",
            "--augment", "randaugment", "--verbose", "2",
            "--metrics-out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["steps"] == 4 and metrics["method"] == "conadv"
    # top1 / test_loss are the final model on the 64 test images: the last epoch's
    # validation on the same images, and a whole number of hits out of 64.
    history = metrics["history"]
    assert metrics["top1"] == pytest.approx(history["val_accuracy"][-1], abs=1e-6)
    assert metrics["test_loss"] == pytest.approx(history["val_loss"][-1], rel=1e-5)
    hits = metrics["top1"] * 64
    assert abs(hits - round(hits)) < 1e-4
    assert metrics["wall_time_s"] > 0 and metrics["images_per_s"] > 0
    assert metrics["config"]["optimizer"]["optimizer"] == "lars"
    assert metrics["config"]["adversarial"]["staleness"] == 1
