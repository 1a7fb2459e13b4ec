"""A RoBERTa text classifier whose token-embedding output can be perturbed.

The RoBERTa counterpart of ``perturbable_bert.PerturbableBertClassifier``, with
the interface ScaLA uses (``embed_tokens``, ``logits_from_embeddings``,
``num_classes``, ``call``).  keras-hub's ``RobertaBackbone`` fuses the token and
position embeddings in one ``TokenAndPositionEmbedding`` layer; this class calls
that layer's two sublayers separately so the perturbation ``y`` enters between
them, as for BERT (FreeLB's placement):

    token ids -> embeddings.token_embedding e -> e + y (padding rows of y zero)
              -> + embeddings.position_embedding -> LayerNorm -> dropout
              -> transformer encoder (padding mask) -> features[:, 0] (<s>)
              -> dropout -> Dense(hidden, tanh) -> dropout -> Dense(num_classes)

Everything after ``e + y`` is wired exactly as ``RobertaBackbone.__init__`` wires
it, with the backbone's own layers, so pretrained weights (a keras-hub preset
or a Hugging Face RoBERTa folder; keras-hub's converter skips HF's token-type
embedding, all zero in the released RoBERTa checkpoints) load unchanged.  RoBERTa has no segment
embedding: a ``segment_ids`` key in the inputs (the project's text pipeline
always produces one) is accepted and ignored.  The head is
``keras_hub.models.RobertaTextClassifier``'s; its dropout defaults to 0.1 here
(Hugging Face's ``RobertaClassificationHead``; keras-hub defaults to 0.0).
"""

from __future__ import annotations

from typing import Any

import keras
import keras_hub

from adv_large_batch.flags import ConfigError
from adv_large_batch.models.encoder_presets import named, resolve_preset
from adv_large_batch.models.inputs import PADDING_MASK, TOKEN_IDS
from adv_large_batch.models.perturbable_encoder import PerturbableEncoderClassifier


def add_position_embeddings(token_embeddings: Any, position_embedding: keras.layers.Layer) -> Any:
    """``e + P[:L]``: what ``TokenAndPositionEmbedding.call`` adds to the token lookup.

    ``token_embeddings`` may already carry the perturbation; positions start at 0
    (keras-hub drops the two rows Hugging Face RoBERTa reserves before position 0).
    """
    return keras.ops.add(token_embeddings, position_embedding(token_embeddings))


@keras.saving.register_keras_serializable(package="adv_large_batch")
class PerturbableRobertaClassifier(PerturbableEncoderClassifier):
    """RoBERTa classifier with a perturbation hook on the token-embedding output.

    Args:
        backbone: a ``keras_hub.models.RobertaBackbone`` (random or pretrained).
        num_classes: number of labels; 1 for regression (STS-B).
        dropout: dropout before each head dense layer.
        hidden_dim: width of the tanh head layer (default: the backbone's).

    Example:

    ```python
    import keras_hub, numpy as np
    from adv_large_batch.models.perturbable_roberta import PerturbableRobertaClassifier

    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16)
    model = PerturbableRobertaClassifier(backbone, num_classes=2)
    inputs = {"token_ids": np.array([[0, 5, 2, 1]]),   # <s> x </s> <pad>
              "padding_mask": np.array([[1, 1, 1, 0]])}
    logits = model(inputs)                                 # (1, 2)
    e = model.embed_tokens(inputs["token_ids"])            # (1, 4, 8)
    adv_logits = model.logits_from_embeddings(e + 1e-5, inputs)
    ```
    """

    backbone_class = keras_hub.models.RobertaBackbone
    backbone_description = "keras_hub.models.RobertaBackbone"
    architecture = "roberta"

    def __init__(
        self,
        backbone: keras_hub.models.RobertaBackbone,
        num_classes: int = 2,
        dropout: float = 0.1,
        hidden_dim: int | None = None,
        preprocessor: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, dropout, preprocessor, **kwargs)
        self.head_dim = hidden_dim or backbone.hidden_dim
        policy = backbone.dtype_policy
        # RobertaTextClassifier's head, layer for layer (names, initialisers, activation).
        self.pooled_dropout = keras.layers.Dropout(dropout, dtype=policy, name="pooled_dropout")
        self.pooled_dense = keras.layers.Dense(
            self.head_dim, activation="tanh", dtype=policy, name="pooled_dense"
        )
        self.output_dropout = keras.layers.Dropout(dropout, dtype=policy, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=policy,
            name="logits",
        )
        self.pooled_dense.build((None, backbone.hidden_dim))
        self.output_dense.build((None, self.head_dim))

    def embed_tokens(self, token_ids: Any) -> Any:
        """The token-embedding output e (before the position embeddings)."""
        return self.backbone.embeddings.token_embedding(token_ids)

    def encode(self, token_embeddings: Any, padding_mask: Any, training: bool = False) -> Any:
        """The sequence output for (possibly perturbed) e, wired as in RobertaBackbone."""
        bb = self.backbone
        x = add_position_embeddings(token_embeddings, bb.embeddings.position_embedding)
        x = bb.embeddings_layer_norm(x)
        x = bb.embeddings_dropout(x, training=training)
        for layer in bb.transformer_layers:
            x = layer(x, padding_mask=padding_mask, training=training)
        return x

    def head(self, features: Any, training: bool = False) -> Any:
        """RobertaTextClassifier's head on the sequence output: logits from the <s> token."""
        x = features[:, self.backbone.start_token_index, :]
        x = self.pooled_dropout(x, training=training)
        x = self.pooled_dense(x)
        x = self.output_dropout(x, training=training)
        return self.output_dense(x)

    def logits_from_embeddings(
        self,
        token_embeddings: Any,
        inputs: dict[str, Any],
        training: bool = False,
    ) -> Any:
        """Run everything after the token lookup on (possibly perturbed) e."""
        features = self.encode(token_embeddings, inputs[PADDING_MASK], training=training)
        return self.head(features, training=training)

    def encoder_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Token ids and padding mask: RoBERTa has no segment embedding (``segment_ids``,
        which the text pipeline always gives, is ignored)."""
        return {TOKEN_IDS: inputs[TOKEN_IDS], PADDING_MASK: inputs[PADDING_MASK]}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["hidden_dim"] = self.head_dim
        return config

    @classmethod
    def load_backbone(cls, path: str, what: str = "preset") -> keras_hub.models.RobertaBackbone:
        return load_roberta_backbone(path, what)

    @classmethod
    def load_tokenizer(cls, path: str, what: str = "preset") -> keras_hub.models.RobertaTokenizer:
        return load_roberta_tokenizer(path, what)


def load_roberta_backbone(preset: str, what: str = "preset") -> keras_hub.models.RobertaBackbone:
    """A RoBERTa backbone from a local keras-hub preset or Hugging Face RoBERTa folder.

    Example: ``load_roberta_backbone("/data/roberta-large")`` (config.json with
    ``model_type: roberta`` + model.safetensors, or a keras-hub ``save_to_preset``
    folder).  Any failure becomes a ``ConfigError`` (exit status 2 on the CLI) naming
    ``preset`` as ``what`` (the CLI passes ``"--model"``).
    """
    preset = resolve_preset(preset, what)
    try:
        return keras_hub.models.RobertaBackbone.from_preset(preset)
    except Exception as exc:  # keras-hub raises many types for a broken folder
        raise ConfigError(
            f"{named(what, preset)} could not be loaded as a RoBERTa encoder: {exc}"
        ) from exc


def load_roberta_tokenizer(preset: str, what: str = "preset") -> keras_hub.models.RobertaTokenizer:
    """RoBERTa's byte-level BPE tokenizer from the same folder.

    keras-hub presets keep it in tokenizer.json + assets/tokenizer/{vocabulary.json,
    merges.txt}; Hugging Face folders in vocab.json + merges.txt.

    Example: ``load_roberta_tokenizer("/data/roberta-large")(["a film"])``.
    """
    preset = resolve_preset(preset, what)
    try:
        return keras_hub.models.RobertaTokenizer.from_preset(preset)
    except Exception as exc:
        raise ConfigError(
            f"{named(what, preset)} has no usable RoBERTa tokenizer (keras-hub tokenizer.json "
            f"+ assets, or Hugging Face vocab.json + merges.txt): {exc}"
        ) from exc
