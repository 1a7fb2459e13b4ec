"""``model.save`` / ``keras.models.load_model`` give back a trainer that resumes training.

A ScaLA (tiny random BERT, dropout on, LAMB with warm-up + linear decay, delayed
injection whose t_s falls inside the resumed part) and a ConAdv (tiny CNN with split
BatchNorm, buffered adversarial batches) run 2 steps, are saved to ``.keras`` and loaded,
and run 2 more: weights, optimizer slots, ``optimizer.iterations``, ``batches_seen`` and
the method's state equal those of 4 steps in one go.  Every random draw is keyed by
(seed, ``batches_seen``, micro-batch), so restoring the seed (config) and the counter (a
variable) makes dropout masks and random starts repeat exactly.
"""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
from adv_large_batch.models.text_classifiers import build_network
from adv_large_batch.optimizers import (
    LAMB,
    LARS,
    PathDecayAdamW,
    WarmupLinearDecay,
    WarmupPolynomialDecay,
)
from adv_large_batch.scala import ScaLA, ScaLAConfig
from tests.conadv.test_conadv import image_batches, tiny_cnn
from tests.tiny_bert import token_batch

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RTOL, ATOL = 1e-5, 1e-7


def weights_of(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]


def optimizer_state(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.optimizer.variables]


def assert_all_close(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def resumed_equals_one_go(make, first, second, path) -> tuple[keras.Model, keras.Model, dict]:
    """(one go, loaded and resumed, what was checked on the way): ``make()`` compiled, fit
    on ``first`` then ``second`` in one go; and fit on ``first``, saved, loaded, fit on
    ``second``."""
    whole = make()
    whole.fit(first.concatenate(second), verbose=0, shuffle=False)
    part = make()
    part.fit(first, verbose=0, shuffle=False)
    seen = {"loss": part.evaluate(first, verbose=0, return_dict=True)["loss"]}
    part.save(path)
    loaded = keras.models.load_model(path)
    seen["loaded_loss"] = loaded.evaluate(first, verbose=0, return_dict=True)["loss"]
    seen["iterations"] = int(loaded.optimizer.iterations.numpy())
    seen["batches_seen"] = int(loaded.batches_seen.numpy())
    seen["learning_rate"] = float(loaded.optimizer.learning_rate.numpy())
    seen["optimizer"] = optimizer_state(part)
    seen["loaded_optimizer"] = optimizer_state(loaded)
    seen["history"] = loaded.fit(second, verbose=0, shuffle=False).history
    return whole, loaded, seen


# ---- ScaLA ------------------------------------------------------------------------------------
def scala_model() -> ScaLA:
    """Tiny random BERT (dropout 0.1), 2 micro-batches of 4, perturbation on from step 3
    (t_s = epoch 2 of 3 steps), LAMB with 2 warm-up steps then linear decay."""
    network, _ = build_network("tiny-random", 2, seed=0)
    model = ScaLA(
        network, ScaLAConfig(start_epoch=2), micro_batch_size=4, seed=0, steps_per_epoch=3
    )
    schedule = WarmupLinearDecay(1e-3, total_steps=8, warmup_steps=2)
    model.compile(optimizer=LAMB(schedule, weight_decay=0.01), loss=CE, metrics=["accuracy"])
    return model


def token_data(first: int, count: int) -> tf.data.Dataset:
    x, y = token_batch(8 * (first + count), seed=1)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).skip(first)


@pytest.mark.slow  # 3 traced ScaLA fits of the tiny BERT and a fresh process, 40-70 s
def test_scala_saved_loaded_and_resumed_equals_one_run(tmp_path):
    """The three checks of one pair of runs, in one test (a module fixture shared by three
    tests ran once per pytest-xdist worker: twice, 35-45 s each)."""
    path = str(tmp_path / "scala.keras")
    runs = resumed_equals_one_go(scala_model, token_data(0, 2), token_data(2, 2), path)
    check_a_loaded_scala_model_is_compiled_with_its_lamb_schedule_and_step(*runs)
    check_the_resumed_scala_run_equals_one_run(*runs)
    check_importing_the_method_is_all_a_fresh_process_needs(runs[1], tmp_path)


def check_a_loaded_scala_model_is_compiled_with_its_lamb_schedule_and_step(
    whole: ScaLA, loaded: ScaLA, seen: dict
) -> None:
    assert isinstance(loaded, ScaLA) and loaded.config == whole.config
    assert loaded.network.dropout == 0.1  # dropout on: its masks must repeat too
    assert loaded.steps_per_epoch == 3 and loaded.seed == 0
    assert isinstance(loaded.optimizer, LAMB)
    saved, expected = loaded.optimizer.get_config(), whole.optimizer.get_config()
    saved.pop("name"), expected.pop("name")  # (Keras numbers the names of a process)
    assert saved == expected  # the schedule and the parameter-group patterns included
    # lr(2) = the peak, at the end of the warm-up (a schedule restarted at 0 gives 0)
    assert seen["learning_rate"] == pytest.approx(1e-3)
    assert seen["iterations"] == 2 and seen["batches_seen"] == 2
    assert_all_close(seen["loaded_optimizer"], seen["optimizer"])  # moments restored
    assert seen["loaded_loss"] == pytest.approx(seen["loss"], rel=1e-6)


def check_the_resumed_scala_run_equals_one_run(whole: ScaLA, loaded: ScaLA, seen: dict) -> None:
    assert seen["history"]["adv_on"] == [0.5]  # t_s = 3 crossed in the resumed part
    assert int(loaded.optimizer.iterations.numpy()) == 4
    assert int(loaded.batches_seen.numpy()) == 4
    assert int(loaded.adv_start_step.numpy()) == 3
    assert_all_close(weights_of(loaded), weights_of(whole))
    assert_all_close(optimizer_state(loaded), optimizer_state(whole))


# ---- ConAdv -----------------------------------------------------------------------------------
CONADV_CASES = {
    "separate-lars": (
        ConAdvConfig(method="conadv", eps=8, staleness=1),
        lambda: LARS(WarmupPolynomialDecay(2.0, total_steps=8, warmup_steps=2), weight_decay=1e-4),
    ),
    "shared-adamw": (
        ConAdvConfig(method="conadv", eps=8, staleness=1, attack_pass="shared"),
        lambda: PathDecayAdamW(WarmupLinearDecay(1e-2, 8, 2), weight_decay=0.01),
    ),
}


@pytest.mark.parametrize("case", sorted(CONADV_CASES))
def test_conadv_saved_loaded_and_resumed_equals_one_run(case, tmp_path):
    config, optimizer = CONADV_CASES[case]

    def make() -> ConAdv:
        model = ConAdv(tiny_cnn(), config, micro_batch_size=4, seed=5, batch_size=8)
        model.compile(optimizer=optimizer(), loss=CE, metrics=["accuracy"])
        return model

    paired = pair_with_future(image_batches(5), 1)
    whole, loaded, seen = resumed_equals_one_go(
        make, paired.take(2), paired.skip(2), str(tmp_path / "conadv.keras")
    )
    assert isinstance(loaded, ConAdv) and loaded.config == config and loaded.batch_size == 8
    assert type(loaded.optimizer) is type(whole.optimizer)
    assert seen["iterations"] == 2 and seen["batches_seen"] == 2
    assert seen["loaded_loss"] == pytest.approx(seen["loss"], rel=1e-6)
    assert_all_close(seen["loaded_optimizer"], seen["optimizer"])
    assert seen["history"]["stale_fraction"] == [1.0]  # both resumed steps used the buffer
    assert int(loaded.optimizer.iterations.numpy()) == 4
    for variable, expected in zip(loaded.per_worker_variables(), whole.per_worker_variables()):
        np.testing.assert_allclose(variable.numpy(), expected.numpy(), rtol=RTOL, atol=ATOL)
    assert_all_close(weights_of(loaded), weights_of(whole))
    assert_all_close(optimizer_state(loaded), optimizer_state(whole))


# ---- what cannot be restored ------------------------------------------------------------------
def unregistered_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """A custom loss nobody registered with ``keras.saving.register_keras_serializable``."""
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


def test_an_unrestorable_loss_is_named_at_load_time(tmp_path):
    model = ConAdv(tiny_cnn(), ConAdvConfig(method="disadv", eps=8), micro_batch_size=4)
    model.compile(optimizer=LARS(1.0), loss=unregistered_loss)
    model.fit(image_batches(1), verbose=0)
    path = str(tmp_path / "custom_loss.keras")
    model.save(path)
    with pytest.raises(ValueError, match=r"loss.*unregistered_loss.*custom_objects"):
        keras.models.load_model(path)
    loaded = keras.models.load_model(path, custom_objects={"unregistered_loss": unregistered_loss})
    assert int(loaded.optimizer.iterations.numpy()) == 1
    assert not keras.models.load_model(path, compile=False).compiled


def check_importing_the_method_is_all_a_fresh_process_needs(loaded: ScaLA, tmp_path) -> None:
    """No ``custom_objects``: ``import adv_large_batch.scala`` registers the trainer, the
    network (``PerturbableBertClassifier``), LAMB and its schedule."""
    path = str(tmp_path / "fresh.keras")
    loaded.save(path)
    script = (
        "import sys, keras, adv_large_batch.scala\n"
        "m = keras.models.load_model(sys.argv[1])\n"
        "print(type(m.network).__name__, type(m.optimizer).__name__, int(m.optimizer.iterations))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, path], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["PerturbableBertClassifier", "LAMB", "4"]
