"""ConAdv from a notebook: errors in the caller's words, before any work (issue 24, item 2).

A real ``ConAdv`` on the tiny split-BN CNN of ``test_conadv``: a buffer built for one batch
size fed another (before: a Keras ``variable.assign`` shape error about
``adv_buffer_images``), images outside ``[0, 1]`` (before: accepted silently), and the
class docstring's example (before: an ``ImportError``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
from adv_large_batch.conadv.inputs import batch_rows_message, check_pixel_range
from tests.conadv.test_conadv import CE, tiny_cnn
from tests.tiny_bert import SingleProcess

RNG = np.random.default_rng(0)
IMAGES = RNG.random((64, 6, 6, 1)).astype("float32")
LABELS = RNG.integers(0, 3, 64).astype("int32")


def conadv(attack_pass="separate", batch_size=32):
    model = ConAdv(
        tiny_cnn(),
        ConAdvConfig(staleness=1, attack_pass=attack_pass),
        micro_batch_size=4,
        backend=SingleProcess(),
        batch_size=batch_size,
    )
    model.compile(optimizer="sgd", loss=CE, metrics=["accuracy"])
    return model


def paired(batch, images=IMAGES):
    data = tf.data.Dataset.from_tensor_slices((images, LABELS))
    return pair_with_future(data.batch(batch, drop_remainder=True), 1)


# ---- batch size --------------------------------------------------------------------------
@pytest.mark.parametrize("attack_pass", ["separate", "shared"])
def test_a_batch_of_another_size_is_refused_when_fit_starts(attack_pass):
    model = conadv(attack_pass, batch_size=32)
    with pytest.raises(ValueError) as err:
        model.fit(paired(16), epochs=1, verbose=0)
    message = str(err.value)
    assert "batch_size=32" in message and "batches of 16 rows" in message
    assert "drop_remainder=True" in message and "build ConAdv with batch_size=16" in message
    assert "adv_buffer_images" not in message
    assert model.train_function is None and int(model.batches_seen.numpy()) == 0  # no work


def test_the_step_refuses_another_batch_size_when_traced():
    """Data that is no paired dataset (here a traced step) is checked at trace time."""
    model = conadv(batch_size=32)
    spec = tf.TensorSpec([16, 6, 6, 1], tf.float32)
    labels = tf.TensorSpec([16], tf.int32)

    @tf.function(input_signature=[spec, spec, labels])
    def prepare(images, next_images, y):
        x = {"images": images, "next_images": next_images, "next_labels": y}
        return model.prepare_batch(x, y, None)

    with pytest.raises(ValueError, match=re.escape("batch_size=32")) as err:
        prepare.get_concrete_function()
    assert "batches of 16 rows" in str(err.value)


def test_the_message_counts_replicas():
    message = batch_rows_message(16, 48, replicas=2)
    assert "batch_size=16" in message
    assert "batches of 48 rows; expected 32 (2 replicas x 16)" in message
    assert "build ConAdv with batch_size=24" in message


def test_the_right_batch_size_trains(capsys):
    model = conadv(batch_size=16)
    history = model.fit(paired(16), epochs=1, verbose=2)
    assert int(model.batches_seen.numpy()) == 3 and "stale_fraction" in history.history
    assert " img/s - " in capsys.readouterr().out  # the progress line, in images


# ---- pixel range ----------------------------------------------------------------------------
def disadv():
    model = ConAdv(tiny_cnn(), ConAdvConfig(method="disadv"), backend=SingleProcess())
    model.compile(optimizer="sgd", loss=CE, metrics=["accuracy"])
    return model


@pytest.mark.parametrize(
    "images, seen",
    [
        ((IMAGES * 255).astype("uint8"), "the images are uint8"),
        (IMAGES * 255, "values lie in [0.0"),
        (IMAGES - 0.5, "values lie in [-0.4"),
    ],
    ids=["uint8", "float-0-255", "negative"],
)
def test_images_outside_0_1_are_refused_by_fit_evaluate_and_predict(images, seen):
    model = disadv()
    calls = {
        "fit": lambda: model.fit(images, LABELS, batch_size=16, verbose=0),
        "evaluate": lambda: model.evaluate(images, LABELS, verbose=0),
        "predict": lambda: model.predict(images, verbose=0),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "outside [0, 1]" in message and seen in message, name
        assert "/ 255" in message, name
    assert model.train_function is None  # refused before any work


def test_a_uint8_dataset_is_refused_by_its_spec():
    model = conadv(batch_size=16)
    data = paired(16, (IMAGES * 255).astype("uint8"))
    with pytest.raises(ValueError, match="the dataset's images are uint8"):
        model.fit(data, epochs=1, verbose=0)


def test_images_in_0_1_pass():
    check_pixel_range(IMAGES)
    check_pixel_range({"images": IMAGES, "next_images": IMAGES})
    check_pixel_range(tf.constant(IMAGES))
    check_pixel_range(np.zeros((0, 6, 6, 1), "uint8"))  # nothing to judge
    model = disadv()
    assert model.predict(IMAGES, verbose=0).shape == (64, 3)


# ---- the class docstring ------------------------------------------------------------------
def test_the_class_docstring_example_runs(capsys):
    (example,) = re.findall(r"```python\n(.*?)```", ConAdv.__doc__, re.S)
    example = "\n".join(line[4:] for line in example.splitlines())  # dedent the docstring
    exec(compile(example, "ConAdv docstring", "exec"), {})
    assert "Epoch 1/1 - 2/2 - loss " in capsys.readouterr().out
