"""RoBERTa for ScaLA: the perturbable classifier, folder detection, packing, a real run."""

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

from adv_large_batch import cli
from adv_large_batch.data import text_pipeline, text_tasks
from adv_large_batch.flags import ConfigError
from adv_large_batch.models.encoder_presets import architecture_of_config, encoder_architecture
from adv_large_batch.models.inputs import trim_to_longest
from adv_large_batch.models.perturbable_roberta import PerturbableRobertaClassifier
from adv_large_batch.models.text_classifiers import build_network
from adv_large_batch.scala import ScaLA, ScaLAConfig
from tests.tiny_bert import SingleProcess

START, PAD, END = 0, 1, 2  # RoBERTa's <s>, <pad>, </s>
VOCAB = 100


def tiny_roberta_backbone(seed=0, vocabulary_size=VOCAB, max_sequence_length=32, dropout=0.0):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.RobertaBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=max_sequence_length,
        dropout=dropout,
    )


def tiny_roberta(seed=0, num_classes=2, dropout=0.0):
    backbone = tiny_roberta_backbone(seed, dropout=dropout)
    return PerturbableRobertaClassifier(backbone, num_classes=num_classes, dropout=dropout)


def roberta_batch(n=32, length=12, seed=0):
    """<s> tokens </s> <pad>...; segment_ids included, as the text pipeline passes them."""
    rng = np.random.RandomState(seed)
    lengths = rng.randint(3, length + 1, n)
    positions = np.arange(length)[None]
    mask = (positions < lengths[:, None]).astype("int32")
    ids = np.where(mask == 1, rng.randint(4, VOCAB, (n, length)), PAD)
    ids[:, 0] = START
    ids[np.arange(n), lengths - 1] = END
    x = {"token_ids": ids.astype("int32"), "segment_ids": np.zeros_like(ids), "padding_mask": mask}
    return x, (ids[:, 1] > VOCAB // 2).astype("int32")


def tiny_roberta_tokenizer():
    """Byte-level BPE over all 256 byte symbols (any text tokenizes) plus a few merges."""
    vocab = {"<s>": START, "<pad>": PAD, "</s>": END, "<mask>": 3}
    for symbol in bytes_to_unicode()[1]:
        vocab.setdefault(symbol, len(vocab))
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ f", "Ġf i"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    return keras_hub.models.RobertaTokenizer(vocabulary=vocab, merges=merges)


def save_as_hugging_face_roberta(backbone, tokenizer, folder):
    """Write a Hugging Face RoBERTa folder: the inverse of keras-hub's convert_roberta.py.

    (Real RoBERTa checkpoints also hold an all-zero token-type embedding, which
    keras-hub does not read.)
    """
    from safetensors.numpy import save_file

    folder.mkdir()
    hidden = backbone.hidden_dim

    def dense(kernel):  # keras (in, ..., out) -> HF (out, in)
        return np.ascontiguousarray(np.reshape(kernel.numpy(), (hidden, -1)).T)

    positions = backbone.embeddings.position_embedding.position_embeddings.numpy()
    emb = "roberta.embeddings"
    weights = {
        f"{emb}.word_embeddings.weight": backbone.token_embedding.embeddings.numpy(),
        f"{emb}.position_embeddings.weight": np.pad(positions, ((2, 0), (0, 0))),
        f"{emb}.LayerNorm.weight": backbone.embeddings_layer_norm.gamma.numpy(),
        f"{emb}.LayerNorm.bias": backbone.embeddings_layer_norm.beta.numpy(),
    }
    for i, layer in enumerate(backbone.transformer_layers):
        prefix, attention = f"roberta.encoder.layer.{i}", layer._self_attention_layer
        for name, part in (
            ("query", "query_dense"),
            ("key", "key_dense"),
            ("value", "value_dense"),
        ):
            sub = getattr(attention, part)
            weights[f"{prefix}.attention.self.{name}.weight"] = dense(sub.kernel)
            weights[f"{prefix}.attention.self.{name}.bias"] = sub.bias.numpy().reshape(-1)
        out = attention.output_dense
        weights[f"{prefix}.attention.output.dense.weight"] = np.ascontiguousarray(
            np.reshape(out.kernel.numpy(), (-1, hidden)).T
        )
        weights[f"{prefix}.attention.output.dense.bias"] = out.bias.numpy()
        for hf, keras_layer in (
            ("attention.output.LayerNorm", layer._self_attention_layer_norm),
            ("output.LayerNorm", layer._feedforward_layer_norm),
        ):
            weights[f"{prefix}.{hf}.weight"] = keras_layer.gamma.numpy()
            weights[f"{prefix}.{hf}.bias"] = keras_layer.beta.numpy()
        for hf, keras_layer in (
            ("intermediate.dense", layer._feedforward_intermediate_dense),
            ("output.dense", layer._feedforward_output_dense),
        ):
            weights[f"{prefix}.{hf}.weight"] = np.ascontiguousarray(keras_layer.kernel.numpy().T)
            weights[f"{prefix}.{hf}.bias"] = keras_layer.bias.numpy()
    save_file(weights, str(folder / "model.safetensors"))
    config = {
        "model_type": "roberta",
        "architectures": ["RobertaForMaskedLM"],
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": hidden,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim,
        "hidden_dropout_prob": backbone.dropout,
        "max_position_embeddings": backbone.max_sequence_length + 2,
        "pad_token_id": PAD,
    }
    (folder / "config.json").write_text(json.dumps(config))
    vocabulary = tokenizer.get_vocabulary()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocabulary)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tokenizer.merges) + "\n")


def as_tensors(x):
    return {k: tf.constant(v) for k, v in x.items()}


def test_zero_perturbation_equals_keras_hub_backbone_and_head():
    x, _ = roberta_batch(8)
    net = tiny_roberta(num_classes=3, dropout=0.1)
    inputs = as_tensors(x)
    backbone_inputs = {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]}
    # keras-hub's own classifier on the same backbone, with our head weights.
    reference = keras_hub.models.RobertaTextClassifier(
        net.backbone, num_classes=3, preprocessor=None, dropout=0.1
    )
    for name in ("pooled_dense", "logits"):
        reference.get_layer(name).set_weights(net.get_layer(name).get_weights())
    expected = reference(backbone_inputs, training=False).numpy()

    e = net.embed_tokens(inputs["token_ids"])
    perturbed = net.logits_from_embeddings(e + tf.zeros_like(e), inputs, training=False)
    np.testing.assert_allclose(perturbed.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net(inputs, training=False).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(net(backbone_inputs).numpy(), expected, atol=1e-5)  # no segments
    # The sequence output itself is the backbone's on every real token.
    features = net.encode(e, inputs["padding_mask"]).numpy()
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(
        features[real], net.backbone(backbone_inputs).numpy()[real], rtol=1e-5, atol=1e-5
    )


def test_perturbation_on_padding_rows_changes_nothing_on_real_rows_it_does():
    x, _ = roberta_batch(6, seed=1)
    net = tiny_roberta()
    trimmed = trim_to_longest(as_tensors(x))
    e = net.embed_tokens(trimmed["token_ids"])
    pad = 1.0 - tf.cast(trimmed["padding_mask"], e.dtype)[..., None]
    # Random (not constant: LayerNorm removes a constant shift of a row) perturbations.
    noise = tf.random.stateless_normal(tf.shape(e), seed=[1, 2])
    clean = net.logits_from_embeddings(e, trimmed).numpy()
    np.testing.assert_allclose(
        net.logits_from_embeddings(e + 5.0 * noise * pad, trimmed).numpy(),
        clean,
        rtol=1e-5,
        atol=1e-5,
    )
    moved = net.logits_from_embeddings(e + noise * (1.0 - pad), trimmed).numpy()
    assert np.abs(moved - clean).max() > 1e-4


def test_config_round_trip_and_head_layers():
    net = tiny_roberta(num_classes=1, dropout=0.2)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    assert isinstance(clone, PerturbableRobertaClassifier)
    assert clone.num_classes == 1 and clone.dropout == 0.2 and clone.head_dim == 32
    assert clone.backbone.get_config() == net.backbone.get_config()
    clone.set_weights(net.get_weights())
    x, _ = roberta_batch(4, seed=2)
    np.testing.assert_allclose(clone(x).numpy(), net(x).numpy(), rtol=1e-6, atol=1e-6)
    assert net.pooled_dense.activation is keras.activations.tanh
    assert net.output_dense.kernel.shape == (32, 1)
    with pytest.raises(TypeError, match="RobertaBackbone"):
        PerturbableRobertaClassifier(
            keras_hub.models.BertBackbone(
                vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16
            )
        )


def test_scala_trains_tiny_roberta_with_pga1():
    x, y = roberta_batch(64, seed=3)
    model = ScaLA(
        tiny_roberta(seed=1, dropout=0.1),
        ScaLAConfig(method="scala", start_step=0, steps=1),
        micro_batch_size=16,
        backend=SingleProcess(),
        seed=0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = [v.numpy() for v in model.network.trainable_variables]
    logs = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history  # 4 steps
    assert all(np.isfinite(logs[key]).all() for key in ("loss", "task_loss", "regulariser"))
    assert logs["adv_on"] == [1.0, 1.0] and min(logs["regulariser"]) > 0.0
    assert logs["perturbation_linf"][-1] == pytest.approx(1e-5, rel=1e-3)
    after = model.network.trainable_variables
    assert max(np.abs(a - b.numpy()).max() for a, b in zip(before, after)) > 1e-5


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"registered_name": "keras_hub>RobertaBackbone", "config": {}}, "roberta"),
        ({"registered_name": "keras_hub>BertBackbone"}, "bert"),
        ({"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]}, "roberta"),
        ({"model_type": "bert"}, "bert"),
        ({"model_type": "gpt2"}, None),
        ({"registered_name": "keras_hub>GPT2Backbone"}, None),
        ({"hidden_size": 8}, None),
    ],
)
def test_architecture_of_config(config, expected):
    assert architecture_of_config(config) == expected


def test_bad_folders_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="is not a supported encoder folder"):
        encoder_architecture(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="model_type 'gpt2'.*supported: bert, roberta"):
        encoder_architecture(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        encoder_architecture(str(tmp_path))


def test_roberta_packing_doubles_the_separator():
    tok = tiny_roberta_tokenizer()
    # Two examples of (first, second) segments: ("the fin", "in the") and ("a", "f").
    split = text_tasks.TextSplit([["the fin", "a"], ["in the", "f"]], np.array([0, 1]))
    out = text_pipeline.tokenize(split, tok, 16)
    ids, mask = out["token_ids"], out["padding_mask"]
    first, second = (np.asarray(tok(tf.constant(text))).tolist() for text in ("the fin", "in the"))
    expected = [START, *first, END, END, *second, END]
    assert ids[0, : len(expected)].tolist() == expected
    assert (ids[0, len(expected) :] == PAD).all() and mask[0].sum() == len(expected)
    assert [tok.id_to_token(i) for i in first + second] == ["t", "he", "Ġf", "in", "in", "Ġthe"]


def test_bert_packing_is_unchanged_and_a_keras_hub_bert_preset_still_dispatches(tmp_path):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    assert text_pipeline.packing_tokens(tokenizer) == {
        "start_value": 2,
        "end_value": 3,
        "sep_value": None,  # MultiSegmentPacker's default: [CLS] a [SEP] b [SEP]
        "pad_value": 0,
    }
    keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    ).save_to_preset(str(tmp_path))
    tokenizer.save_to_preset(str(tmp_path))  # no vocab.txt: the keras-hub tokenizer assets
    network, loaded = build_network(str(tmp_path), num_classes=2, seed=0)
    assert type(network).__name__ == "PerturbableBertClassifier"
    assert loaded.get_vocabulary() == vocabulary


def test_finetune_end_to_end_on_a_keras_hub_roberta_preset(tmp_path):
    preset = tmp_path / "tiny-roberta"
    tokenizer = tiny_roberta_tokenizer()
    backbone = tiny_roberta_backbone(vocabulary_size=tokenizer.vocabulary_size())
    backbone.save_to_preset(str(preset))
    tokenizer.save_to_preset(str(preset))
    assert encoder_architecture(str(preset)) == "roberta"
    metrics = tmp_path / "metrics.json"
    args = ["finetune", "--model", str(preset), "--train-limit", "64", "--eval-limit", "32"]
    args += ["--batch-size", "16", "--micro-batch-size", "8", "--epochs", "1"]
    args += ["--max-seq-length", "32", "--method", "scala", "--adv-start-epoch", "0"]
    args += ["--optimizer", "lamb", "--lr", "1e-3", "--metrics-out", str(metrics)]
    assert cli.main([*args, "--verbose", "0"]) == 0
    result = json.loads(metrics.read_text())
    history = result["history"]
    assert result["steps"] == 4 and history["adv_on"] == [1.0]
    assert np.isfinite(history["task_loss"]).all() and history["regulariser"][0] > 0
    assert 0.0 <= result["validation"]["accuracy"] <= 1.0


def test_build_network_loads_a_hugging_face_roberta_folder(tmp_path):
    tokenizer = tiny_roberta_tokenizer()
    source = tiny_roberta_backbone(seed=4, vocabulary_size=tokenizer.vocabulary_size())
    folder = tmp_path / "hf-roberta"
    save_as_hugging_face_roberta(source, tokenizer, folder)
    assert encoder_architecture(str(folder)) == "roberta"
    network, loaded_tokenizer = build_network(str(folder), num_classes=2, seed=0)
    assert isinstance(network, PerturbableRobertaClassifier)
    assert network.backbone.max_sequence_length == source.max_sequence_length
    x, _ = roberta_batch(4, seed=5)
    inputs = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(
        network.backbone(inputs).numpy()[real], source(inputs).numpy()[real], atol=1e-5
    )
    text = tf.constant("the fin in the film")
    assert np.asarray(loaded_tokenizer(text)).tolist() == np.asarray(tokenizer(text)).tolist()


def test_finetune_refuses_an_unsupported_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert cli.main(["finetune", "--model", str(tmp_path), "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert "is not a supported encoder folder" in err and "model_type 't5'" in err
