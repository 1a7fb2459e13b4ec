"""The text classifier and tokenizer of a ``--model`` value: what ``finetune``, ``sharpness``
and the benchmarks build.

``--model`` is a local encoder folder or a keras-hub preset (``encoder_presets.py`` picks
BERT-family or RoBERTa), ``bundled`` (resolved by the config to ``default_model_path()``,
all-MiniLM-L6-v2), or ``tiny-random`` (``TINY_MODEL``: a 2-layer random BERT with the
bundled vocabulary, for smoke tests).

Example:

```python
from adv_large_batch.models.text_classifiers import build_network

# "tiny-random": a 2-layer random BERT; "bundled": all-MiniLM-L6-v2; or a folder / preset
network, tokenizer = build_network("tiny-random", num_classes=2, seed=0)
network.embed_tokens, network.logits_from_embeddings   # what ScaLA calls
```
"""

from __future__ import annotations

from typing import Any

from adv_large_batch.models.encoder_presets import (
    BUNDLED_MODEL,
    DEFAULT_SEQUENCE_LENGTH,
    TINY_MODEL,
    default_model_path,
    encoder_architecture,
)


def classifier_class(preset: str, what: str = "preset") -> Any:
    """``PerturbableBertClassifier`` or ``PerturbableRobertaClassifier``: what ``preset``
    holds (``encoder_presets.encoder_architecture``); ``ConfigError`` for anything else."""
    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier
    from adv_large_batch.models.perturbable_roberta import PerturbableRobertaClassifier

    classes = {"bert": PerturbableBertClassifier, "roberta": PerturbableRobertaClassifier}
    return classes[encoder_architecture(preset, what)]


def load_text_classifier(
    preset: str,
    num_classes: int = 2,
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
    seed: int | None = None,
    dropout: float = 0.1,
    what: str = "preset",
) -> Any:
    """The perturbable classifier of ``preset``, new head, preprocessor attached: the one
    loader behind ``from_preset``, ``build_network`` and the command line.

    ``preset``: ``"bundled"`` (all-MiniLM-L6-v2), ``"tiny-random"``, a local BERT-family or
    RoBERTa folder, or a keras-hub preset name / handle; the class follows the encoder
    (``classifier_class``).  ``seed`` seeds Keras, NumPy and Python first (when given);
    ``what`` is how errors name ``preset`` (``preset='x'``; the CLI passes ``"--model"``).

    Example:

    ```python
    from adv_large_batch.models.text_classifiers import load_text_classifier

    network = load_text_classifier("bundled", num_classes=2, sequence_length=32, seed=0)
    logits = network(network.preprocessor(["a gripping, well acted film"]))   # (1, 2)
    ```
    """
    cls = classifier_class(preset, what)
    return cls.from_preset(preset, num_classes, sequence_length, seed, dropout, what=what)


def build_tokenizer(model: str, what: str = "--model") -> Any:
    """The tokenizer of ``model`` (the classifier's ``preprocessor.tokenizer``): the folder's
    own, a preset's, or the bundled vocabulary for ``bundled`` and the tiny random BERT."""
    return classifier_class(model, what).preset_tokenizer(model, what)


def build_classifier(
    model: str, num_classes: int, vocabulary_size: int | None = None, what: str = "--model"
) -> Any:
    """``load_text_classifier(model, num_classes)`` for the command line (errors name
    ``--model``); ``vocabulary_size`` is unused (the tokenizer gives it)."""
    return load_text_classifier(model, num_classes, what=what)


def build_network(
    model: str,
    num_classes: int,
    seed: int,
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
    what: str = "--model",
) -> tuple[Any, Any]:
    """(perturbable classifier, tokenizer) for a local encoder folder, a preset,
    ``bundled`` or the tiny random BERT, the new head initialised from ``seed``: the
    classifier of ``load_text_classifier`` and its preprocessor's tokenizer.

    Example: ``network, tokenizer = build_network("/data/roberta-large", 2, seed=0)``.
    """
    network = load_text_classifier(model, num_classes, sequence_length, seed, what=what)
    return network, network.preprocessor.tokenizer


__all__ = [
    "BUNDLED_MODEL",
    "TINY_MODEL",
    "build_classifier",
    "build_network",
    "build_tokenizer",
    "classifier_class",
    "default_model_path",
    "load_text_classifier",
]
