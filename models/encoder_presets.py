"""Which encoder a local ``--model`` folder holds, and the classifier + tokenizer for it.

Two folder formats, both read by keras-hub's ``from_preset`` without a network:

* keras-hub presets (``save_to_preset``): ``config.json`` names the backbone class
  in ``registered_name`` (``keras_hub>BertBackbone``, ``keras_hub>RobertaBackbone``);
* Hugging Face folders: ``config.json`` has ``model_type`` (``bert``, ``roberta``)
  next to ``model.safetensors`` and the tokenizer files.

Architecture -> classifier: ``bert`` -> ``PerturbableBertClassifier`` (BERT,
MiniLM and other ``BertModel`` checkpoints), ``roberta`` ->
``PerturbableRobertaClassifier``.  Detection reads only ``config.json`` (no
TensorFlow), so a bad folder is refused before anything is built.
"""

from __future__ import annotations

import json
import os
from typing import Any

from adv_large_batch.config import ConfigError

# keras-hub backbone class name / Hugging Face model_type -> architecture.
KERAS_HUB_BACKBONES = {"BertBackbone": "bert", "RobertaBackbone": "roberta"}
HF_MODEL_TYPES = {"bert": "bert", "roberta": "roberta"}
ARCHITECTURES = ("bert", "roberta")


def architecture_of_config(config: dict[str, Any]) -> str | None:
    """The architecture a ``config.json`` describes, or None when it is not supported.

    Example:

    ```python
    architecture_of_config({"registered_name": "keras_hub>RobertaBackbone"})  # "roberta"
    architecture_of_config({"model_type": "bert", "hidden_size": 384})         # "bert"
    architecture_of_config({"model_type": "gpt2"})                             # None
    ```
    """
    registered = config.get("registered_name")
    if isinstance(registered, str):
        return KERAS_HUB_BACKBONES.get(registered.split(">")[-1])
    model_type = config.get("model_type")
    if isinstance(model_type, str):
        return HF_MODEL_TYPES.get(model_type)
    return None


def describe_config(config: dict[str, Any]) -> str:
    """What a config.json says it is, for error messages."""
    for key in ("registered_name", "model_type", "class_name"):
        if isinstance(config.get(key), str):
            return f"{key} {config[key]!r}"
    return "neither registered_name nor model_type"


def encoder_architecture(path: str) -> str:
    """``"bert"`` or ``"roberta"`` for a local encoder folder; ``ConfigError`` otherwise.

    Example: ``encoder_architecture("/data/roberta-large")  # "roberta"``.
    """
    expected = (
        "expected a local keras-hub preset folder (save_to_preset: config.json with "
        "registered_name BertBackbone or RobertaBackbone) or a Hugging Face BERT / RoBERTa "
        "folder (config.json with model_type bert or roberta, model.safetensors, and "
        "vocab.txt or vocab.json + merges.txt)"
    )
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.isfile(config_path):
        raise ConfigError(f"--model {path!r} is not a supported encoder folder: {expected}")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {path!r}: config.json is not readable JSON ({exc})") from exc
    architecture = architecture_of_config(config) if isinstance(config, dict) else None
    if architecture is None:
        found = describe_config(config) if isinstance(config, dict) else "not a JSON object"
        raise ConfigError(
            f"--model {path!r} is not a supported encoder folder: its config.json has {found} "
            f"(supported: {', '.join(ARCHITECTURES)}); {expected}"
        )
    return architecture


def load_tokenizer(path: str) -> Any:
    """The tokenizer of the encoder in a local folder (WordPiece for BERT, BPE for RoBERTa)."""
    if encoder_architecture(path) == "roberta":
        from adv_large_batch.models import perturbable_roberta as roberta

        return roberta.load_roberta_tokenizer(path)
    from adv_large_batch.models import perturbable_bert as bert

    return bert.load_bert_tokenizer(path)


def load_encoder_classifier(path: str, num_classes: int) -> Any:
    """The perturbable classifier of the encoder in a local folder (pretrained weights)."""
    if encoder_architecture(path) == "roberta":
        from adv_large_batch.models import perturbable_roberta as roberta

        backbone = roberta.load_roberta_backbone(path)
        return roberta.PerturbableRobertaClassifier(backbone, num_classes=num_classes)
    from adv_large_batch.models import perturbable_bert as bert

    return bert.PerturbableBertClassifier(bert.load_bert_backbone(path), num_classes=num_classes)


def load_classifier(path: str, num_classes: int) -> tuple[Any, Any]:
    """(perturbable classifier, tokenizer) for the encoder in a local folder.

    Example:

    ```python
    network, tokenizer = load_classifier("/data/roberta-large", num_classes=2)
    network.embed_tokens, network.logits_from_embeddings   # what ScaLA calls
    ```
    """
    return load_encoder_classifier(path, num_classes), load_tokenizer(path)
