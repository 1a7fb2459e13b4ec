"""ScaLA's train_step: accumulation, delayed injection, evaluate, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.flags import ConfigError
from adv_large_batch.models.inputs import trim_to_longest
from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier
from adv_large_batch.scala import DelayedInjection, ScaLA, ScaLAConfig
from tests.tiny_bert import SingleProcess, tiny_classifier, token_batch

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compiled(model, lr=0.1):
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=CE, metrics=["accuracy"])
    return model


def one_step_weights(config, micro):
    x, y = token_batch(32)
    model = compiled(
        ScaLA(
            tiny_classifier(seed=3), config, micro_batch_size=micro, backend=SingleProcess(), seed=0
        )
    )
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return [v.numpy() for v in model.network.trainable_variables]


@pytest.mark.parametrize(
    "config",
    [
        ScaLAConfig(method="baseline"),
        # Deterministic perturbation: zero start, GT target, per-example normalised step.
        ScaLAConfig(
            method="scala",
            adv_target="labels",
            init="zero",
            step_norm="linf",
            eps=1e-2,
            step_size=1e-1,
        ),
    ],
    ids=["baseline", "scala"],
)
def test_accumulation_equals_one_big_batch(config):
    big = one_step_weights(config, None)
    accumulated = one_step_weights(config, 8)
    untouched = [v.numpy() for v in tiny_classifier(seed=3).trainable_variables]
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(big, untouched))  # it did train
    for a, b in zip(big, accumulated):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def shared_mask_step(config):
    """One SGD step of the tiny BERT *with dropout 0.1* whose clean, ascent and adversarial
    passes share one dropout mask (``dropout="shared"``): r(y = 0) is then exactly 0."""
    x, y = token_batch(32)
    network = tiny_classifier(seed=3, dropout=0.1)
    model = compiled(ScaLA(network, config, micro_batch_size=8, backend=SingleProcess(), seed=0))
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    return [v.numpy() for v in model.network.trainable_variables]


def test_perturbation_changes_the_update():
    """With the LP target (the model's own probabilities) and shared masks, a zero
    perturbation gives r = 0 and the baseline's update; only a real one changes it.
    (With the GT target r = cross-entropy, which changes the update even at y = 0.)"""
    knobs = dict(adv_target="probs", dropout="shared", step_norm="linf", eps=3e-2, step_size=3e-1)
    base = shared_mask_step(ScaLAConfig(method="baseline", dropout="shared"))
    # Control: a zero start under the LP target has zero gradient (r is minimal at y = 0),
    # so y stays 0: this is what a perturbation that does nothing trains like.
    zero = shared_mask_step(ScaLAConfig(init="zero", **knobs))
    scala = shared_mask_step(ScaLAConfig(init="uniform", **knobs))
    for a, b in zip(base, zero):  # measured: bit-identical
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    # Measured 2.5e-5 (with independent masks even a zero start moves the update by 8e-5:
    # mask disagreement alone, which is why the masks are shared here).
    assert max(np.abs(a - b).max() for a, b in zip(base, scala)) > 2e-6


def injected_from_step_3() -> ScaLA:
    """A compiled tiny ScaLA whose perturbation is on from optimizer step 3."""
    network = tiny_classifier()
    config = ScaLAConfig(start_step=3)
    return compiled(ScaLA(network, config, micro_batch_size=16, backend=SingleProcess()), lr=0.01)


def test_delayed_injection_turns_on_exactly_at_t_s():
    x, y = token_batch(64)
    model = injected_from_step_3()
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(logs["adv_on"]))

    # 2 steps per epoch; t_s = step 3: steps 0,1,2 clean, step 3 on (epoch means 0, 0.5, 1).
    history = model.fit(
        x, y, batch_size=32, epochs=3, verbose=0, shuffle=False, callbacks=[Record()]
    )
    assert history.history["adv_on"] == [0.0, 0.5, 1.0]
    reg = history.history["regulariser"]
    linf = history.history["perturbation_linf"]
    assert reg[0] == 0.0 and reg[2] > 0.0
    assert linf[0] == 0.0 and linf[2] == pytest.approx(1e-5, rel=1e-3)
    assert seen[:2] == [0.0, 0.0]  # running means inside epoch 0


def test_start_step_in_steps_is_not_overridden_by_the_epoch_callback(capsys):
    """``finetune`` always adds ``DelayedInjection(start_epoch)``; it used to reset an
    explicit ``--adv-start-step`` to ``start_epoch * steps`` (0), injecting from step 0."""
    x, y = token_batch(64)
    model = injected_from_step_3()
    history = model.fit(
        x, y, batch_size=32, epochs=3, verbose=0, shuffle=False, callbacks=[DelayedInjection(0, 2)]
    )
    assert int(model.adv_start_step.numpy()) == 3
    assert history.history["adv_on"] == [0.0, 0.5, 1.0]
    assert "epoch 2/3: adversarial perturbation ON from step 3" in capsys.readouterr().out


def test_finetune_honours_adv_start_step():
    from adv_large_batch.commands import finetune
    from adv_large_batch.optimizers import OptimizerConfig

    run_cfg = finetune.FinetuneConfig(
        model="tiny-random",
        train_limit=64,
        eval_limit=32,
        batch_size=32,
        micro_batch_size=16,
        epochs=2,
        max_seq_length=16,
        verbose=0,
    )
    result = finetune.run(
        run_cfg, ScaLAConfig(method="scala", start_step=3), OptimizerConfig(optimizer="lamb")
    )
    # 2 steps per epoch, on from step 3: epoch means of adv_on 0 and 0.5 (was 1 and 1).
    assert result["history"]["adv_on"] == [0.0, 0.5]


def test_delayed_injection_by_epoch_prints_the_switch(capsys):
    x, y = token_batch(64)
    model = compiled(ScaLA(tiny_classifier(), ScaLAConfig(start_epoch=2), backend=SingleProcess()))
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert history.history["adv_on"] == [0.0, 1.0]  # t_s = 2 of 2: on in the 2nd epoch
    assert int(model.adv_start_step.numpy()) == 2
    out = capsys.readouterr().out
    assert "[ScaLA] epoch 2/2: adversarial perturbation ON from step 2" in out


def test_evaluate_is_unaffected_by_the_perturbation():
    x, y = token_batch(32)
    net = tiny_classifier(dropout=0.1)
    expected = CE(y, net(x, training=False)).numpy()
    model = compiled(ScaLA(net, ScaLAConfig(start_step=0), backend=SingleProcess()))
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"loss", "accuracy"}
    np.testing.assert_allclose(model.predict(x, verbose=0), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_perturbation_enters_after_token_embedding_only_on_real_tokens():
    x, _ = token_batch(4)
    net = tiny_classifier()
    inputs = {k: tf.constant(v) for k, v in x.items()}
    e = net.embed_tokens(inputs["token_ids"])
    np.testing.assert_allclose(
        net.logits_from_embeddings(e, inputs).numpy(), net(inputs).numpy(), rtol=1e-5, atol=1e-6
    )
    # Changing the embedding of a padding position changes nothing (it is masked).
    trimmed = trim_to_longest(inputs)
    e = net.embed_tokens(trimmed["token_ids"])
    pad = 1 - tf.cast(trimmed["padding_mask"], tf.float32)[..., None]
    np.testing.assert_allclose(
        net.logits_from_embeddings(e + 5.0 * pad, trimmed).numpy(),
        net.logits_from_embeddings(e, trimmed).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_trim_to_longest():
    x, _ = token_batch(8, length=12, seed=4)
    longest = int(x["padding_mask"].sum(1).max())
    trimmed = trim_to_longest({k: tf.constant(v) for k, v in x.items()})
    assert trimmed["token_ids"].shape == (8, longest)


def test_classifier_and_trainer_round_trip_config():
    net = tiny_classifier(num_classes=3)
    clone = PerturbableBertClassifier.from_config(net.get_config())
    assert clone.num_classes == 3 and clone.backbone.num_layers == 2
    model = ScaLA(
        net,
        ScaLAConfig(eps=2e-5, start_epoch=2),
        micro_batch_size=4,
        backend=SingleProcess(),
        seed=7,
    )
    config = model.get_config()
    assert config["adversarial"]["eps"] == 2e-5 and config["micro_batch_size"] == 4
    again = ScaLA.from_config({**config, "backend": SingleProcess()})
    assert again.config == model.config and again.seed == 7
    # Saved before the ScaLAConfig was "adversarial": under "config", a config in a config.
    old = {k: v for k, v in config.items() if k != "adversarial"}
    old["config"] = config["adversarial"]
    assert ScaLA.from_config({**old, "backend": SingleProcess()}).config == model.config


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"eps": 0.0}, "--adv-eps"),
        ({"step_size": -1e-4}, "--adv-step"),
        ({"weight": 0.0}, "--adv-lambda"),
        ({"steps": 0}, "--adv-steps"),
        ({"start_epoch": -1}, "--adv-start-epoch"),
        ({"method": "fgsm"}, "--method"),
    ],
)
def test_bad_adversarial_config_names_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        ScaLAConfig(**kwargs)


def test_fit_tiny_bert_learns_and_gaussian_method_runs():
    x, y = token_batch(128, seed=2)
    real_tokens = x["padding_mask"].sum(axis=1) * 8  # entries of y_i (hidden 8)
    start_only = np.mean(1e-5 * np.sqrt(real_tokens / 3.0))  # uniform in [-eps, eps]
    gaussian = np.mean(1e-5 * np.sqrt(real_tokens))
    for method in ("scala", "gaussian"):
        model = ScaLA(
            tiny_classifier(seed=1),
            ScaLAConfig(method=method),
            micro_batch_size=16,
            backend=SingleProcess(),
        )
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=CE, metrics=["accuracy"])
        history = model.fit(x, y, batch_size=32, epochs=6, verbose=0)
        losses = history.history["task_loss"]
        assert losses[-1] < losses[0] - 0.05, (method, losses)
        linf = history.history["perturbation_linf"][-1]
        l2 = history.history["perturbation_l2"][-1]
        if method == "scala":
            # The clip binds: one linf step of rho = 10 eps would reach 1.1e-4 unclipped.
            assert linf == pytest.approx(1e-5, rel=1e-4)
            # The ascent pushes entries to the boundary: ||y_i|| exceeds what the uniform
            # start alone has (at most eps sqrt(n_i H / 3), Jensen) -- 4.9e-5 vs 4.4e-5.
            assert l2 > 1.05 * start_only, (l2, start_only)
        else:  # noise of stddev eps on the real tokens, never clipped
            assert linf > 2e-5
            assert l2 == pytest.approx(gaussian, rel=0.05)
