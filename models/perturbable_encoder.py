"""What the perturbable text classifiers share: ``PerturbableEncoderClassifier``, the base of
``PerturbableBertClassifier`` (``perturbable_bert.py``) and ``PerturbableRobertaClassifier``
(``perturbable_roberta.py``).

A keras-hub encoder backbone, a perturbation hook on its token-embedding output and a
classification head: the base checks the arguments, keeps the backbone, ``num_classes``
and ``dropout`` (the ``get_config`` keys every saved model has), and runs ``call`` as
``logits_from_embeddings(embed_tokens(token ids), inputs)`` on the batch trimmed to its
longest sequence.  A subclass names its backbone type, builds its head and implements
``embed_tokens`` / ``logits_from_embeddings`` (``models.inputs.PerturbableClassifier``).

The keras-hub shape: a classifier may carry a ``preprocessor``
(``text_preprocessor.TextClassifierPreprocessor``: raw strings -> the input dict), which
the trainers' ``fit`` / ``evaluate`` / ``predict`` apply to raw strings, and
``from_preset`` builds one from a name (``bundled``, ``tiny-random``, a folder or a
keras-hub preset) with its preprocessor attached.
"""

from __future__ import annotations

from typing import Any

import keras

from adv_large_batch.flags import ConfigError
from adv_large_batch.models import encoder_presets as presets
from adv_large_batch.models.inputs import TOKEN_IDS, trim_to_longest
from adv_large_batch.models.text_preprocessor import (
    DEFAULT_SEQUENCE_LENGTH,
    TextClassifierPreprocessor,
)


class PerturbableEncoderClassifier(keras.Model):
    """Base of the text classifiers whose token-embedding output can be perturbed.

    Args:
        backbone: an instance of the subclass's ``backbone_class``.
        num_classes: number of labels; 1 for regression (STS-B).
        dropout: the head's dropout rate.
        preprocessor: optional; raw strings -> the input dict (a
            ``TextClassifierPreprocessor``, or any callable layer returning the dict).
            Not a sub-layer (no weights): it can be set or replaced at any time
            (``network.preprocessor = ...``) and is kept by ``get_config`` / ``.keras``.

    Subclasses set ``backbone_class``, ``backbone_description`` (named when the
    backbone is of another type) and ``architecture`` (``encoder_presets``' name),
    implement ``embed_tokens``, ``logits_from_embeddings``
    (``models.inputs.PerturbableClassifier``), ``load_backbone`` and ``load_tokenizer``
    (local folders) and are registered with
    ``keras.saving.register_keras_serializable`` under their own names.
    """

    backbone_class: type = type(None)
    backbone_description: str = ""
    architecture: str = ""

    def __init__(
        self,
        backbone: Any,
        num_classes: int = 2,
        dropout: float = 0.1,
        preprocessor: Any = None,
        **kwargs: Any,
    ):
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
        self.preprocessor = preprocessor

    def __setattr__(self, name: str, value: Any) -> None:
        # The preprocessor holds no weights: kept outside Keras' layer tracking, so it can be
        # attached after the network is built (tracking is locked then).
        if name == "preprocessor":
            if value is not None and not callable(value):
                raise TypeError(
                    f"preprocessor must be a layer that maps raw strings to the input dict "
                    f"(e.g. TextClassifierPreprocessor), got {type(value).__name__}"
                )
            object.__setattr__(self, "_preprocessor", value)
            return
        super().__setattr__(name, value)

    @property
    def preprocessor(self) -> Any:
        """Raw strings -> the input dict, or None (then only tokenised dicts are taken)."""
        return getattr(self, "_preprocessor", None)

    @property
    def hidden_dim(self) -> int:
        return self.backbone.hidden_dim

    # ---- building one from a name (the keras-hub shape) ---------------------------------
    @classmethod
    def load_backbone(cls, path: str, what: str = "preset") -> Any:
        """The pretrained backbone in a local folder (subclasses)."""
        raise NotImplementedError

    @classmethod
    def load_tokenizer(cls, path: str, what: str = "preset") -> Any:
        """The tokenizer in a local folder (subclasses)."""
        raise NotImplementedError

    @classmethod
    def tiny_backbone(cls, vocabulary_size: int) -> Any:
        """The random backbone of ``tiny-random`` (BERT only)."""
        raise ConfigError(
            f"{presets.TINY_MODEL!r} is a random BERT: use "
            "PerturbableBertClassifier.from_preset or load_text_classifier"
        )

    @classmethod
    def preset_tokenizer(cls, preset: str, what: str = "preset") -> Any:
        """The tokenizer of ``preset`` (``bundled``, ``tiny-random``: the bundled vocabulary,
        a folder: its casing rules, a keras-hub preset: its own)."""
        path = presets.resolve_preset(preset, what)
        cls._check_architecture(path, what)
        if path == presets.TINY_MODEL:
            return cls.load_tokenizer(presets.default_model_path(), what)
        if presets.is_preset_handle(path):
            return presets.preset_tokenizer(path, what)
        return cls.load_tokenizer(path, what)

    @classmethod
    def _check_architecture(cls, path: str, what: str) -> None:
        found = presets.encoder_architecture(path, what)
        if found != cls.architecture:
            raise ConfigError(
                f"{presets.named(what, path)} holds a {found} encoder, not {cls.architecture}: "
                "load it with load_text_classifier (adv_large_batch.models.text_classifiers), "
                "which picks the class"
            )

    @classmethod
    def from_preset(
        cls,
        preset: str,
        num_classes: int = 2,
        sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
        seed: int | None = None,
        dropout: float = 0.1,
        *,
        what: str = "preset",
    ) -> PerturbableEncoderClassifier:
        """The classifier of ``preset`` with a new head and its preprocessor attached.

        ``preset``: ``"bundled"`` (all-MiniLM-L6-v2, offline), ``"tiny-random"`` (a 2-layer
        random BERT with the bundled vocabulary), a local folder (keras-hub preset or
        Hugging Face) or a keras-hub preset name / handle (downloaded by keras-hub).
        ``seed`` (when given) seeds Keras, NumPy and Python first, so the head is
        reproducible.  ``what``: how errors name ``preset`` (the CLI passes ``"--model"``).

        Example:

        ```python
        from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier

        network = PerturbableBertClassifier.from_preset("tiny-random", num_classes=2, seed=0)
        features = network.preprocessor(["a gripping film"])   # token_ids, ... (1, 128)
        logits = network(features)                             # (1, 2)
        ```
        """
        tokenizer = cls.preset_tokenizer(preset, what)
        path = presets.resolve_preset(preset, what)
        if seed is not None:  # here: after a preset name's architecture probe, which draws
            keras.utils.set_random_seed(seed)
        if path == presets.TINY_MODEL:
            backbone = cls.tiny_backbone(tokenizer.vocabulary_size())
        elif presets.is_preset_handle(path):
            backbone = presets.preset_backbone(path, what=what)
        else:
            backbone = cls.load_backbone(path, what)
        return cls(
            backbone,
            num_classes=num_classes,
            dropout=dropout,
            preprocessor=TextClassifierPreprocessor(tokenizer, sequence_length=sequence_length),
        )

    def encoder_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The input keys the encoder reads (here all of them), before trimming."""
        return inputs

    def call(self, inputs: dict[str, Any], training: bool = False) -> Any:
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
                "preprocessor": (
                    None
                    if self.preprocessor is None
                    else keras.saving.serialize_keras_object(self.preprocessor)
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PerturbableEncoderClassifier:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if isinstance(config.get("preprocessor"), dict):
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)
