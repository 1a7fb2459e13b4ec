"""Raw strings in: ``TextClassifierPreprocessor``, ``from_preset`` and the trainers' fit /
evaluate / predict on strings (issue 24, the text half).  Real tokenizers and networks."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.data import text_pipeline, text_tasks
from adv_large_batch.engine.inputs import adapt_inputs
from adv_large_batch.flags import ConfigError
from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier, load_bert_tokenizer
from adv_large_batch.models.perturbable_roberta import PerturbableRobertaClassifier
from adv_large_batch.models.text_classifiers import (
    build_network,
    build_tokenizer,
    default_model_path,
    load_text_classifier,
)
from adv_large_batch.models.text_preprocessor import TextClassifierPreprocessor, packing_tokens
from adv_large_batch.scala import ScaLA, ScaLAConfig
from tests.models.test_perturbable_roberta import END, PAD, START, tiny_roberta_tokenizer
from tests.tiny_bert import SingleProcess, tiny_classifier

SINGLE = [
    "A gripping, well-acted film!",
    "dull",
    "Café au lait is NOT a movie at all: it is a drink that goes on and on and on",
]
PAIR = (["who wrote it?", "x"], ["she did, long ago, in a land far far away from here", "y"])
TEXTS = [f"{word} film number {i}" for i, word in enumerate(["great", "awful"] * 16)]
LABELS = [1, 0] * 16
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def reference_tokenize(columns, tokenizer, length):
    """``text_pipeline.tokenize`` as the command line packed before the preprocessor."""
    packer = keras_hub.layers.MultiSegmentPacker(
        **packing_tokens(tokenizer), sequence_length=length, truncate="round_robin"
    )
    segments = tuple(tokenizer(tf.constant(column)) for column in columns)
    ids, segment_ids = packer(segments if len(segments) > 1 else segments[0])
    return {
        "token_ids": np.asarray(ids, np.int32),
        "segment_ids": np.asarray(segment_ids, np.int32),
        "padding_mask": np.asarray(ids != tokenizer.pad_token_id, np.int32),
    }


def assert_same_features(a, b):
    assert set(a) == set(b) == {"token_ids", "segment_ids", "padding_mask"}
    for key in a:
        assert np.asarray(a[key]).dtype == np.int32, key
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def scala(network, method="scala"):
    config = ScaLAConfig(method=method)
    model = ScaLA(network, config, micro_batch_size=8, backend=SingleProcess(), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=CE, metrics=["accuracy"])
    return model


def test_config_round_trip_keeps_the_tokenizer_settings():
    preprocessor = TextClassifierPreprocessor(load_bert_tokenizer("bundled"), sequence_length=16)
    config = preprocessor.get_config()
    restored = TextClassifierPreprocessor.from_config(config)
    assert restored.get_config() == config
    assert restored.sequence_length == 16 and config["truncate"] == "round_robin"
    tokenizer = config["tokenizer"]
    assert tokenizer["registered_name"] == "keras_hub>BertTokenizer"
    assert tokenizer["config"]["lowercase"] and tokenizer["config"]["strip_accents"]
    with pytest.raises(ValueError, match="sequence_length must be an int >= 2, got 1"):
        TextClassifierPreprocessor(load_bert_tokenizer("bundled"), sequence_length=1)


@pytest.mark.parametrize("columns", [[SINGLE], list(PAIR)], ids=["single", "pair"])
def test_packing_equals_the_command_lines(columns):
    tokenizer = build_tokenizer(default_model_path())
    expected = reference_tokenize(columns, tokenizer, 16)
    split = text_tasks.TextSplit(columns, np.zeros(len(columns[0]), np.int32))
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=16)
    x = columns[0] if len(columns) == 1 else tuple(columns)
    assert_same_features(text_pipeline.tokenize(split, tokenizer, 16), expected)
    assert_same_features(preprocessor(x), expected)
    assert_same_features(preprocessor.encode(columns, chunk_size=2), expected)  # 2 chunks
    if len(columns) == 2:  # [CLS] a [SEP] b [SEP], truncated round-robin
        ids, segments = expected["token_ids"][0], expected["segment_ids"][0]
        assert ids[0] == tokenizer.cls_token_id and (ids == tokenizer.sep_token_id).sum() == 2
        assert segments[:6].tolist() == [0] * 6 and segments[6:].tolist() == [1] * 10


def test_roberta_pairs_are_packed_with_a_double_separator():
    tokenizer = tiny_roberta_tokenizer()
    out = TextClassifierPreprocessor(tokenizer, sequence_length=16)((["the fin"], ["in the"]))
    first, second = (np.asarray(tokenizer(t)).tolist() for t in ("the fin", "in the"))
    expected = [START, *first, END, END, *second, END]
    assert out["token_ids"][0, : len(expected)].tolist() == expected
    assert (out["token_ids"][0, len(expected) :] == PAD).all()
    assert out["padding_mask"][0].sum() == len(expected)


def test_a_saved_classifier_keeps_its_preprocessor_and_vocabulary(tmp_path):
    network = PerturbableBertClassifier.from_preset("tiny-random", sequence_length=16, seed=0)
    assert network.preprocessor.sequence_length == 16 and network.dropout == 0.1
    assert network.get_config()["preprocessor"]["config"]["sequence_length"] == 16
    path = str(tmp_path / "net.keras")
    network.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.preprocessor, TextClassifierPreprocessor)
    tokenizer = loaded.preprocessor.tokenizer
    assert tokenizer.get_vocabulary() == network.preprocessor.tokenizer.get_vocabulary()
    features = loaded.preprocessor(SINGLE)
    assert_same_features(features, network.preprocessor(SINGLE))
    np.testing.assert_allclose(loaded(features), network(features), atol=1e-6)


# The input path does not depend on the method (ScaLA on raw strings, with MiniLM: the
# README's notebook example, run by tests/test_docstring_examples.py).
@pytest.mark.parametrize("method", ["baseline"])
def test_fit_evaluate_predict_on_raw_strings_and_on_tokenised_dicts(method):
    network = PerturbableBertClassifier.from_preset("tiny-random", num_classes=2, seed=0)
    network.preprocessor.sequence_length = 16
    model = scala(network, method)
    before = [v.numpy() for v in network.trainable_variables]
    history = model.fit(TEXTS, LABELS, batch_size=16, epochs=1, verbose=0)  # 2 steps
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, network.trainable_variables))
    # Pre-tokenised dicts pass unchanged (labels as a list become an array).
    features = network.preprocessor.encode(TEXTS)
    x, y = adapt_inputs(network, features, LABELS)
    assert x is features and isinstance(y, np.ndarray) and y.tolist() == LABELS
    history = model.fit(features, y, batch_size=16, epochs=1, verbose=0,
                        validation_data=(TEXTS[:16], LABELS[:16]))  # fmt: skip
    assert 0.0 <= history.history["val_accuracy"][0] <= 1.0  # raw validation strings too
    results = model.evaluate(TEXTS[:16], LABELS[:16], verbose=0, return_dict=True)
    assert 0.0 <= results["accuracy"] <= 1.0
    assert model.predict(["a new sentence"], verbose=0).shape == (1, 2)
    assert model.predict(PAIR, verbose=0).shape == (2, 2)  # sentence pairs
    np.testing.assert_allclose(
        model.predict({k: v[:8] for k, v in features.items()}, verbose=0),
        model.predict(TEXTS[:8], verbose=0),
        atol=1e-5,
    )
    # A tf.data.Dataset of strings is mapped through the preprocessor, in tf.data.
    dataset = tf.data.Dataset.from_tensor_slices((TEXTS[:8], LABELS[:8])).batch(4)
    x, _ = adapt_inputs(network, dataset)
    first = next(iter(x))[0]
    assert_same_features({k: v.numpy() for k, v in first.items()}, network.preprocessor(TEXTS[:4]))


def test_raw_strings_without_a_preprocessor_say_how_to_attach_one():
    network = tiny_classifier()
    model = scala(network)
    with pytest.raises(ValueError, match=r"has no preprocessor.*from_preset\(\"bundled\"\)"):
        model.predict(["a new sentence"], verbose=0)
    with pytest.raises(ValueError, match="network.preprocessor = TextClassifierPreprocessor"):
        model.fit(TEXTS, LABELS, batch_size=16, verbose=0)
    # Attaching one after the network is built works (it is not a tracked sub-layer).
    network.preprocessor = TextClassifierPreprocessor(load_bert_tokenizer("bundled"), 16)
    assert len(network.weights) == len(tiny_classifier().weights)
    with pytest.raises(TypeError, match="preprocessor must be a layer"):
        network.preprocessor = "not a layer"


def test_errors_name_the_argument_from_python_and_the_flag_from_the_cli(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"^preset='.*missing' is not a supported encoder"):
        PerturbableBertClassifier.from_preset(missing)
    with pytest.raises(ConfigError, match=r"^--model '.*missing' is not a supported encoder"):
        build_network(missing, num_classes=2, seed=0)
    with pytest.raises(ConfigError, match=r"^preset=42 must be a folder, 'bundled'"):
        load_text_classifier(42)
    with pytest.raises(ConfigError, match="holds a bert encoder, not roberta"):
        PerturbableRobertaClassifier.from_preset("tiny-random")
    with pytest.raises(ConfigError, match=r"^preset='.*missing' has no vocab.txt"):
        load_bert_tokenizer(missing)
    assert load_bert_tokenizer("bundled").vocabulary_size() == 30522  # no --model wording


@pytest.mark.slow
def test_bundled_preset_predicts_on_raw_strings_as_on_the_clis_tokenisation():
    network = PerturbableBertClassifier.from_preset("bundled", num_classes=2, seed=0)
    cli_network, tokenizer = build_network(default_model_path(), num_classes=2, seed=0)
    assert type(cli_network) is PerturbableBertClassifier  # one loader: same weights
    for a, b in zip(network.weights, cli_network.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert network.backbone.num_layers == 6 and network.hidden_dim == 384  # MiniLM-L6
    split = text_tasks.TextSplit([SINGLE], np.zeros(3, np.int32))
    features = text_pipeline.tokenize(split, tokenizer, 128)
    np.testing.assert_allclose(
        scala(network).predict(SINGLE, verbose=0),
        cli_network.predict(features, verbose=0),
        atol=1e-5,
    )


def test_a_sentence_pair_of_unequal_columns_is_refused_naming_both_lengths():
    from adv_large_batch.engine.inputs import adapt_inputs

    with pytest.raises(ValueError, match="two text columns of one length, got 2 and 1 texts"):
        adapt_inputs(object(), (["is it good?", "so-so"], ["it is."]))
