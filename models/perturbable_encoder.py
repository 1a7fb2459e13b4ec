"""What the perturbable text classifiers share: ``PerturbableEncoderClassifier``, the base of
``PerturbableBertClassifier`` (``perturbable_bert.py``) and ``PerturbableRobertaClassifier``
(``perturbable_roberta.py``).

A keras-hub encoder backbone, a perturbation hook on its token-embedding output and a
classification head: the base checks the arguments, keeps the backbone, ``num_classes``
and ``dropout`` (the ``get_config`` keys every saved model has), and runs ``call`` as
``logits_from_embeddings(embed_tokens(token ids), inputs)`` on the batch trimmed to its
longest sequence.  A subclass names its backbone type, builds its head and implements
``embed_tokens`` / ``logits_from_embeddings`` (``models.inputs.PerturbableClassifier``).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from adv_large_batch.models.inputs import TOKEN_IDS, trim_to_longest


class PerturbableEncoderClassifier(keras.Model):
    """Base of the text classifiers whose token-embedding output can be perturbed.

    Args:
        backbone: an instance of the subclass's ``backbone_class``.
        num_classes: number of labels; 1 for regression (STS-B).
        dropout: the head's dropout rate.

    Subclasses set ``backbone_class`` and ``backbone_description`` (named when the
    backbone is of another type), implement ``embed_tokens`` and
    ``logits_from_embeddings`` (``models.inputs.PerturbableClassifier``) and are
    registered with ``keras.saving.register_keras_serializable`` under their own names.
    """

    backbone_class: type = type(None)
    backbone_description: str = ""

    def __init__(self, backbone: Any, num_classes: int = 2, dropout: float = 0.1, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(backbone, self.backbone_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.backbone_description}, "
                f"got {type(backbone).__name__}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout

    @property
    def hidden_dim(self) -> int:
        return self.backbone.hidden_dim

    def encoder_inputs(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The input keys the encoder reads (here all of them), before trimming."""
        return inputs

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        inputs = trim_to_longest(self.encoder_inputs(inputs))
        return self.logits_from_embeddings(
            self.embed_tokens(inputs[TOKEN_IDS]), inputs, training=training
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes,
                "dropout": self.dropout,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PerturbableEncoderClassifier:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
