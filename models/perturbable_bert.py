"""A BERT-family text classifier whose token-embedding output can be perturbed.

ScaLA ("ScaLA: Speeding-Up Fine-tuning of Pre-trained Transformer Networks via
Efficient and Scalable Adversarial Perturbation", arXiv:2201.12469; section 3.1 of the
ICLR 2022 submission, "Practical Considerations")
perturbs the continuous word embeddings.  Like FreeLB, the perturbation ``y``
enters right after the token-embedding lookup and *before* the position and
segment embeddings and the embedding LayerNorm are added:

    token ids -> token embedding e -> e + y (padding rows of y zeroed)
              -> + position + segment -> LayerNorm -> dropout
              -> transformer encoder -> pooled [CLS] -> dropout -> dense head

(SMART's reference code adds the position embeddings twice; this order avoids
that.)  The layers are the keras-hub ``BertBackbone``'s own, so real pretrained
weights load unchanged; the head matches ``keras_hub.models.BertTextClassifier``
(pooled output -> dropout -> ``Dense(num_classes)``, logits out).
"""

from __future__ import annotations

import os
from typing import Any

import keras
import keras_hub

from adv_large_batch.flags import ConfigError
from adv_large_batch.models.encoder_presets import named, resolve_preset
from adv_large_batch.models.inputs import PADDING_MASK, SEGMENT_IDS
from adv_large_batch.models.perturbable_encoder import PerturbableEncoderClassifier


@keras.saving.register_keras_serializable(package="adv_large_batch")
class PerturbableBertClassifier(PerturbableEncoderClassifier):
    """BERT classifier with a perturbation hook on the token-embedding output.

    Args:
        backbone: a ``keras_hub.models.BertBackbone`` (random or pretrained).
        num_classes: number of labels; 1 for regression (STS-B).
        dropout: dropout before the head (keras-hub's classifier uses 0.1).

    Example:

    ```python
    import keras_hub, numpy as np
    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16)
    model = PerturbableBertClassifier(backbone, num_classes=2)
    inputs = {"token_ids": np.array([[2, 5, 3, 0]]),
              "segment_ids": np.zeros((1, 4), "int32"),
              "padding_mask": np.array([[1, 1, 1, 0]])}
    logits = model(inputs)                       # (1, 2)
    e = model.embed_tokens(inputs["token_ids"])  # (1, 4, 8)
    adv_logits = model.logits_from_embeddings(e + 1e-5, inputs)
    ```
    """

    backbone_class = keras_hub.models.BertBackbone
    backbone_description = "keras_hub.models.BertBackbone (BERT-family encoder)"
    architecture = "bert"

    def __init__(
        self,
        backbone: keras_hub.models.BertBackbone,
        num_classes: int = 2,
        dropout: float = 0.1,
        preprocessor: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, dropout, preprocessor, **kwargs)
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="logits",
        )
        self.output_dense.build((None, backbone.hidden_dim))

    def embed_tokens(self, token_ids: Any) -> Any:
        """The token-embedding output e (before position/segment embeddings)."""
        return self.backbone.token_embedding(token_ids)

    def logits_from_embeddings(
        self,
        token_embeddings: Any,
        inputs: dict[str, Any],
        training: bool = False,
    ) -> Any:
        """Run everything after the token lookup on (possibly perturbed) e."""
        bb = self.backbone
        positions = bb.position_embedding(token_embeddings)
        segments = bb.segment_embedding(inputs[SEGMENT_IDS])
        x = bb.embeddings_add((token_embeddings, positions, segments))
        x = bb.embeddings_layer_norm(x)
        x = bb.embeddings_dropout(x, training=training)
        for layer in bb.transformer_layers:
            x = layer(x, padding_mask=inputs[PADDING_MASK], training=training)
        pooled = bb.pooled_dense(x[:, bb.cls_token_index, :])
        pooled = self.output_dropout(pooled, training=training)
        return self.output_dense(pooled)

    @classmethod
    def load_backbone(cls, path: str, what: str = "preset") -> keras_hub.models.BertBackbone:
        return load_bert_backbone(path, what)

    @classmethod
    def load_tokenizer(cls, path: str, what: str = "preset") -> keras_hub.models.BertTokenizer:
        return load_bert_tokenizer(path, what)

    @classmethod
    def tiny_backbone(cls, vocabulary_size: int) -> keras_hub.models.BertBackbone:
        """``tiny-random``: 2 layers, hidden 32, random weights (smoke tests)."""
        return keras_hub.models.BertBackbone(
            vocabulary_size=vocabulary_size,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            intermediate_dim=64,
            max_sequence_length=512,
        )


def is_encoder_preset(path: str) -> bool:
    """True for a local Hugging Face / keras-hub folder holding a BERT config."""
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "config.json"))
        or os.path.exists(os.path.join(path, "metadata.json"))
    )


def load_bert_backbone(preset: str, what: str = "preset") -> keras_hub.models.BertBackbone:
    """Load a BERT-family backbone from a local preset folder (or ``"bundled"``), with a
    clear error naming ``preset`` as ``what`` (the CLI passes ``"--model"``)."""
    preset = resolve_preset(preset, what)
    if not is_encoder_preset(preset):
        raise ConfigError(
            f"{named(what, preset)} is not a supported encoder folder: expected a local "
            "Hugging Face BERT folder (config.json + model.safetensors + vocab.txt) "
            "or a keras-hub preset folder"
        )
    try:
        return keras_hub.models.BertBackbone.from_preset(preset)
    except Exception as exc:  # keras-hub raises many types for a wrong architecture
        raise ConfigError(
            f"{named(what, preset)} could not be loaded as a BERT-family encoder "
            f"(supported: BERT, MiniLM and other BertModel checkpoints): {exc}"
        ) from exc


def bert_tokenizer_settings(preset: str, what: str = "preset") -> dict[str, bool]:
    """``lowercase`` and ``strip_accents`` as a Hugging Face folder's tokenizer_config.json says.

    Hugging Face's ``BertTokenizer`` convention: ``do_lower_case`` defaults to true;
    ``strip_accents`` null (or absent) means "strip when lower-casing", true/false
    force it.  A folder without tokenizer_config.json is uncased (lower-case, strip).

    Example: ``{"do_lower_case": false}`` (bert-base-cased) ->
    ``{"lowercase": False, "strip_accents": False}``: case and accents kept.
    """
    config_path = os.path.join(preset, "tokenizer_config.json")
    config: Any = {}
    if os.path.exists(config_path):
        import json

        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{named(what, preset)}: tokenizer_config.json is not readable JSON ({exc})"
            ) from exc
        if not isinstance(config, dict):
            raise ConfigError(
                f"{named(what, preset)}: tokenizer_config.json must be a JSON object, "
                f"got {type(config).__name__}"
            )
    lowercase = config.get("do_lower_case", True)
    strip_accents = config.get("strip_accents")
    if not isinstance(lowercase, bool):
        raise ConfigError(
            f"{named(what, preset)}: tokenizer_config.json has do_lower_case {lowercase!r}; "
            "allowed: true or false"
        )
    if strip_accents is not None and not isinstance(strip_accents, bool):
        raise ConfigError(
            f"{named(what, preset)}: tokenizer_config.json has strip_accents {strip_accents!r}; "
            "allowed: true, false or null (strip when lower-casing)"
        )
    return {
        "lowercase": lowercase,
        "strip_accents": lowercase if strip_accents is None else strip_accents,
    }


def load_bert_tokenizer(preset: str, what: str = "preset") -> keras_hub.models.BertTokenizer:
    """The WordPiece tokenizer of a local folder (or ``"bundled"``).

    A Hugging Face folder (vocab.txt) follows its tokenizer_config.json
    (``bert_tokenizer_settings``): uncased checkpoints lower-case and strip
    accents, cased ones (``do_lower_case: false``) keep both.  A keras-hub preset
    folder (tokenizer.json + assets, from ``save_to_preset``) is loaded with its
    own saved settings.  Errors name ``preset`` as ``what`` (the CLI passes ``"--model"``).
    """
    preset = resolve_preset(preset, what)
    vocab = os.path.join(preset, "vocab.txt")
    if not os.path.exists(vocab) and os.path.exists(os.path.join(preset, "tokenizer.json")):
        return keras_hub.models.BertTokenizer.from_preset(preset)
    if not os.path.exists(vocab):
        raise ConfigError(
            f"{named(what, preset)} has no vocab.txt; a BERT WordPiece vocabulary is needed"
        )
    return keras_hub.models.BertTokenizer(vocabulary=vocab, **bert_tokenizer_settings(preset, what))
