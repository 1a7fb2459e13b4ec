"""ScaLA and the trainer against independently computed numbers (issue 14, items 4-6).

* Item 4: the PGA step of an example does not depend on the micro-batch it sits in
  (the ascent follows the gradient of the per-example *sum* of r).
* Item 5: a batch that is not a multiple of ``micro_batch_size`` (the last batch of a
  dataset batched without ``drop_remainder``) trains, and its step is the step of the
  mean loss over the batch (micro-batch i weighted by rows_i / N).
* Item 6: the ascent really ascends, on the bundled pretrained MiniLM and real
  Rotten Tomatoes snippets, with dropout off (so r measures the perturbation only).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.engine.trainer import AccumulatingTrainer
from adv_large_batch.scala import ScaLA, ScaLAConfig, perturbation
from tests.tiny_bert import SingleProcess, tiny_classifier, token_batch

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def as_tensors(x):
    return {k: tf.constant(v) for k, v in x.items()}


def rows_of(x, rows):
    return {k: v[rows] for k, v in x.items()}


# ---- item 4: the PGA step of an example is the same in any micro-batch ------------------------
EPS_BIG, RHO = 1.0, 5.0  # max |rho * grad| is ~0.3 on this model: the clip never binds


def per_example_step(net, inputs, labels):
    """y1 = rho * grad_y CE(label_i, f(e_i + y)) at y = 0, one example at a time (a batch of
    one: no sum/mean question), by a tape written here."""
    out = []
    for i in range(len(labels)):
        xi = rows_of(inputs, slice(i, i + 1))
        e = net.embed_tokens(xi["token_ids"])
        y = tf.zeros_like(e)
        with tf.GradientTape() as tape:
            tape.watch(y)
            logits = net.logits_from_embeddings(e + y, xi, training=False)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels[i : i + 1], logits)[0]
        grad = tape.gradient(loss, y) * tf.cast(xi["padding_mask"], tf.float32)[..., None]
        out.append(RHO * grad.numpy())
    return np.concatenate(out)


def library_step(net, inputs, labels, rows):
    """y1 from ``perturbation.projected_gradient_ascent`` on the micro-batch ``rows``."""
    x = rows_of(inputs, rows)
    e = net.embed_tokens(x["token_ids"])

    def regulariser_of(y):
        logits = net.logits_from_embeddings(e + y, x, training=False)
        return perturbation.label_kl_from_logits(labels[rows], logits)

    y1, _ = perturbation.projected_gradient_ascent(
        regulariser_of, tf.zeros_like(e), RHO, EPS_BIG, 1, "none", x["padding_mask"]
    )
    return y1.numpy()


def scala_step(net, inputs, labels, micro):
    """y1 from ``ScaLA._perturbation`` (what the train step uses), micro-batch by micro-batch."""
    config = ScaLAConfig(
        adv_target="labels", init="zero", step_norm="none", eps=EPS_BIG, step_size=RHO
    )
    model = ScaLA(net, config, micro_batch_size=micro, backend=SingleProcess(), seed=0)
    out = []
    for start in range(0, len(labels), micro):
        x = rows_of(inputs, slice(start, start + micro))
        e = net.embed_tokens(x["token_ids"])
        y1, _ = model._perturbation(e, x, tf.constant(labels[start : start + micro]))
        out.append(y1.numpy())
    return np.concatenate(out)


def test_raw_pga_step_of_an_example_does_not_depend_on_the_micro_batch_size():
    net = tiny_classifier(seed=3)  # dropout 0: every pass is deterministic
    x, labels = token_batch(32)
    inputs = as_tensors(x)
    expected = per_example_step(net, inputs, labels)
    assert 1e-2 < np.abs(expected).max() < 0.5 * EPS_BIG  # a real step, and the clip is idle

    whole = library_step(net, inputs, labels, slice(0, 32))
    by_four = np.concatenate(
        [library_step(net, inputs, labels, slice(i, i + 4)) for i in range(0, 32, 4)]
    )
    # The gradient of the batch *mean* would give expected / 32 and expected / 4.
    np.testing.assert_allclose(whole, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(by_four, expected, rtol=1e-4, atol=1e-6)
    # The same through ScaLA's own perturbation (init zero, GT target, raw step).
    np.testing.assert_allclose(scala_step(net, inputs, labels, 4), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scala_step(net, inputs, labels, 32), expected, rtol=1e-4, atol=1e-6)


def one_step(config, micro, x, y, seed=3, batch=32):
    model = ScaLA(
        tiny_classifier(seed=seed), config, micro_batch_size=micro, backend=SingleProcess(), seed=0
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=CE)
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    return [v.numpy() for v in model.network.trainable_variables]


def test_raw_step_training_with_micro_batches_equals_one_big_batch():
    """With ``step_norm="none"`` the accumulated update (4 x 8) equals the one-pass update
    (the mean-gradient ascent made y 4x larger in a micro-batch of 8 than in one of 32)."""
    config = ScaLAConfig(
        adv_target="labels", init="zero", step_norm="none", eps=EPS_BIG, step_size=RHO
    )
    x, y = token_batch(32)
    big, accumulated = one_step(config, None, x, y), one_step(config, 8, x, y)
    base = one_step(ScaLAConfig(method="baseline"), None, x, y)
    assert max(np.abs(a - b).max() for a, b in zip(big, base)) > 1e-4  # the perturbation acts
    for a, b in zip(big, accumulated):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---- item 5: a batch that is not a multiple of micro_batch_size ------------------------------
def uneven_dataset(x, y, batch=32):
    """``Dataset.batch(batch)`` without ``drop_remainder``: the last batch is shorter."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


SCALA_ZERO = ScaLAConfig(
    adv_target="labels", init="zero", step_norm="linf", eps=1e-2, step_size=1e-1
)


@pytest.mark.parametrize(
    "config", [ScaLAConfig(method="baseline"), SCALA_ZERO], ids=["baseline", "scala"]
)
def test_short_last_batch_trains_and_equals_the_one_pass_step(config):
    x, y = token_batch(52, seed=5)  # batches of 32 and 20; 20 = 8 + 8 + 4

    def weights_after(micro, data):
        model = ScaLA(
            tiny_classifier(seed=3), config, micro_batch_size=micro, backend=SingleProcess(), seed=0
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=CE)
        history = model.fit(data, epochs=1, shuffle=False, verbose=0)
        return [v.numpy() for v in model.network.trainable_variables], model, history

    data = uneven_dataset(x, y)
    assert [int(b[1].shape[0]) for b in data] == [32, 20]
    accumulated, model, history = weights_after(8, data)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert np.isfinite(history.history["loss"][0])
    whole, _, _ = weights_after(None, data)
    untouched = [v.numpy() for v in tiny_classifier(seed=3).trainable_variables]
    assert max(np.abs(a - b).max() for a, b in zip(whole, untouched)) > 1e-4
    for a, b in zip(accumulated, whole):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # The 20-row batch alone, 8 + 8 + 4 against one pass over the 20 rows; equal weights
    # 1/3 per micro-batch (instead of 8/20, 8/20, 4/20) would not match.
    last = tf.data.Dataset.from_tensor_slices((rows_of(x, slice(32, 52)), y[32:])).batch(32)
    short, _, _ = weights_after(8, last)
    one_pass, _, _ = weights_after(None, last)
    for a, b in zip(short, one_pass):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_accumulating_trainer_short_batch_matches_numpy_sgd():
    """A Dense model, MSE, SGD, micro-batches of 8 on a 20-row batch: the step is the
    gradient of the mean over the 20 rows, computed here in NumPy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype("float32")
    # Rows 16-19 (the short micro-batch) carry a large target: mis-weighting them shows.
    t = rng.normal(size=(20, 2)).astype("float32")
    t[16:] += 5.0
    w0 = rng.normal(size=(3, 2)).astype("float32")
    b0 = rng.normal(size=2).astype("float32")
    lr = 0.1

    def trained(micro):
        network = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        network.layers[-1].set_weights([w0, b0])
        trainer = AccumulatingTrainer(network, micro_batch_size=micro, backend=SingleProcess())
        trainer.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
        trainer.fit(uneven_dataset(x, t), epochs=1, shuffle=False, verbose=0)
        return network.layers[-1].get_weights()

    # mse = mean over rows and outputs of (x w + b - t)^2
    residual = (x.astype(np.float64) @ w0 + b0 - t) * 2.0 / (20 * 2)
    w_expected = w0 - lr * x.T.astype(np.float64) @ residual
    b_expected = b0 - lr * residual.sum(axis=0)
    for micro in (8, None):
        w, b = trained(micro)
        np.testing.assert_allclose(w, w_expected, rtol=1e-5, atol=1e-6, err_msg=str(micro))
        np.testing.assert_allclose(b, b_expected, rtol=1e-5, atol=1e-6, err_msg=str(micro))


# ---- item 6: the ascent ascends, on the real pretrained MiniLM (about 10 s) -----------------
def test_pga_ascent_on_pretrained_minilm_moves_y_and_raises_r():
    """Paper radius (eps 1e-5, rho 1e-4), ``linf`` step, dropout off, real snippets: y1 moves
    away from the random start and r(y1) > r(y0). A random start plus the clip (no ascent)
    would give y1 = y0; dropout would give r > 0 without any perturbation."""
    from adv_large_batch.data import text_pipeline, text_tasks
    from adv_large_batch.engine import randomness
    from adv_large_batch.models.inputs import trim_to_longest
    from adv_large_batch.models.text_classifiers import build_network, default_model_path

    keras.utils.set_random_seed(0)
    net, tokenizer = build_network(default_model_path(), 2, seed=0)
    dropouts = [
        layer
        for layer in net._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, keras.layers.Dropout)
    ]
    assert len(dropouts) >= 10
    for layer in dropouts:
        layer.rate = 0.0
    split = text_tasks.load_task("rotten_tomatoes").train.take(8)
    x = trim_to_longest(as_tensors(text_pipeline.tokenize(split, tokenizer, 48)))
    e = net.embed_tokens(x["token_ids"])
    clean = net.logits_from_embeddings(e, x, training=False)
    # Dropout is off: a training pass is the inference pass.
    np.testing.assert_array_equal(net.logits_from_embeddings(e, x, training=True), clean)

    eps = 1e-5
    config = ScaLAConfig(eps=eps, step_size=1e-4, step_norm="linf", init="uniform")
    model = ScaLA(net, config, backend=SingleProcess(), seed=0)
    target = tf.stop_gradient(clean)
    y1, r_start = model._perturbation(e, x, target)
    y0 = perturbation.mask_padding(
        perturbation.random_start(
            tf.shape(e), eps, "uniform", None, model.draw_key(randomness.SCALA_START)
        ),
        x["padding_mask"],
    )

    def r(y):
        logits = net.logits_from_embeddings(e + y, x, training=False)
        return float(perturbation.symmetric_kl_from_logits(clean, logits))

    r0, r1 = r(y0), r(y1)
    assert float(r_start) == pytest.approx(r0, rel=1e-3)  # y0 is the start the step used
    assert np.abs(y1.numpy()).max() <= eps * (1 + 1e-6)
    assert np.abs(y1.numpy() - y0.numpy()).max() > 0.5 * eps
    assert r0 > 0 and r1 > 100.0 * r0, (r0, r1)  # measured: 4.9e-13 -> 1.8e-9
