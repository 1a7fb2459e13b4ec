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

A ``--model`` that is not a path is a keras-hub preset name or handle
(``bert_base_en_uncased``, ``kaggle://keras/bert/keras/bert_base_en_uncased``,
``hf://google-bert/bert-base-uncased``): it goes to keras-hub's ``from_preset``, which
downloads where the network is reachable; when it cannot, one line names the preset and
how to use a local folder instead.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from adv_large_batch.flags import ConfigError

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


#: What a keras-hub preset handle looks like: a scheme://, or a bare preset name.
_HANDLE = re.compile(r"^([a-z]+://.+|[a-z][a-z0-9_]*)$")


def is_preset_handle(value: str) -> bool:
    """True for a keras-hub preset name or handle (``bert_base_en_uncased``,
    ``kaggle://...``, ``hf://...``) that is not an existing path."""
    return not os.path.exists(value) and bool(_HANDLE.match(value))


def _from_preset(handle: str, load: Any) -> Any:
    """``load(handle)`` (a keras-hub ``from_preset``), its failures as one ``ConfigError``."""
    try:
        return load(handle)
    except Exception as exc:  # noqa: BLE001 -- network, missing preset, wrong class: one line
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(
            f"--model {handle!r}: keras-hub could not load this preset ({type(exc).__name__}: "
            f"{reason}); without network access download it elsewhere and pass the folder: "
            f"python -c \"import keras_hub as k; k.models.Backbone.from_preset('{handle}')"
            ".save_to_preset('DIR'); k.models.Tokenizer.from_preset("
            f"'{handle}').save_to_preset('DIR')\" then --model DIR"
        ) from None


def _preset_backbone(handle: str, load_weights: bool = True) -> Any:
    import keras_hub

    return _from_preset(
        handle, lambda h: keras_hub.models.Backbone.from_preset(h, load_weights=load_weights)
    )


def encoder_architecture(path: str) -> str:
    """``"bert"`` or ``"roberta"`` for a local encoder folder or a keras-hub preset handle;
    ``ConfigError`` otherwise.

    Example: ``encoder_architecture("/data/roberta-large")  # "roberta"``.
    """
    if is_preset_handle(path):
        backbone = _preset_backbone(path, load_weights=False)
        architecture = KERAS_HUB_BACKBONES.get(type(backbone).__name__)
        if architecture is None:
            raise ConfigError(
                f"--model {path!r} is a {type(backbone).__name__}; supported: "
                f"{', '.join(KERAS_HUB_BACKBONES)}"
            )
        return architecture
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
    """The tokenizer of the encoder in a local folder or preset (WordPiece for BERT, BPE for
    RoBERTa)."""
    if is_preset_handle(path):
        import keras_hub

        return _from_preset(path, keras_hub.models.Tokenizer.from_preset)
    if encoder_architecture(path) == "roberta":
        from adv_large_batch.models import perturbable_roberta as roberta

        return roberta.load_roberta_tokenizer(path)
    from adv_large_batch.models import perturbable_bert as bert

    return bert.load_bert_tokenizer(path)


def load_encoder_classifier(path: str, num_classes: int) -> Any:
    """The perturbable classifier of the encoder in a local folder or preset (pretrained
    weights)."""
    from adv_large_batch.models import perturbable_bert as bert
    from adv_large_batch.models import perturbable_roberta as roberta

    architecture = encoder_architecture(path)
    if is_preset_handle(path):
        backbone = _preset_backbone(path)
    elif architecture == "roberta":
        backbone = roberta.load_roberta_backbone(path)
    else:
        backbone = bert.load_bert_backbone(path)
    if architecture == "roberta":
        return roberta.PerturbableRobertaClassifier(backbone, num_classes=num_classes)
    return bert.PerturbableBertClassifier(backbone, num_classes=num_classes)
