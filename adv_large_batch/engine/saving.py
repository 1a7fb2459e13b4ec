"""What ``keras.models.load_model`` needs to compile a trainer it rebuilds.

``load_model`` makes the trainer with ``from_config``, then calls its
``compile_from_config(get_compile_config())`` and only then loads the variables of the
file, the optimizer's among them (``keras/src/saving/saving_lib.py``).  So
``AccumulatingTrainer.compile_from_config`` deserializes the ``compile`` arguments here
(optimizer with its learning-rate schedule, loss, metrics) and builds the optimizer's
variables before the load fills them.

An argument that cannot be deserialized (a loss or metric nobody registered with
``keras.saving.register_keras_serializable``) stops the load with a ``ValueError`` that
names it and how to restore it, instead of a model that fails later (``evaluate``: "No
loss to compute").

```python
import keras
from adv_large_batch.engine.saving import deserialize_compile_config
from adv_large_batch.engine.trainer import AccumulatingTrainer
from adv_large_batch.optimizers import LAMB

model = AccumulatingTrainer(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
model.compile(optimizer=LAMB(1e-3), loss="mse", metrics=["mae"])
arguments = deserialize_compile_config(model.get_compile_config(), "AccumulatingTrainer")
assert isinstance(arguments["optimizer"], LAMB) and arguments["loss"] == "mse"
```
"""

from __future__ import annotations

from typing import Any

import keras

# Registers LAMB, LARS, the path-decay AdamW/SGD and the schedules with Keras'
# serialization, so a compile config that names them deserializes without custom_objects.
import adv_large_batch.optimizers  # noqa: F401

#: How much of Keras' own error (which quotes whole configs) a message repeats.
_ERROR_CHARS = 400


def deserialize_compile_config(config: dict[str, Any], owner: str) -> dict[str, Any]:
    """The ``compile`` arguments of a ``get_compile_config()`` dict, deserialized.

    Runs under the ``custom_objects`` of the ``load_model`` call (Keras keeps them in
    scope).  Raises ``ValueError`` naming the argument (``loss``, ``metrics``, ...), the
    object that cannot be restored and ``owner`` (the trainer's class name).
    """
    return {key: _deserialize(key, value, owner) for key, value in config.items()}


def _deserialize(key: str, value: Any, owner: str) -> Any:
    try:
        return keras.saving.deserialize_keras_object(value)
    except Exception as error:  # any failure of a from_config: say which argument
        raise ValueError(unrestorable_message(key, value, owner, error)) from error


def unrestorable_message(key: str, value: Any, owner: str, error: Exception) -> str:
    """Why the compile argument ``key`` (serialized ``value``) cannot be restored."""
    culprit = first_unrestorable(value)
    name = object_name(culprit) if culprit is not None else repr(value)
    short = name.rsplit(".", 1)[-1]
    detail = str(error)
    if len(detail) > _ERROR_CHARS:
        detail = detail[:_ERROR_CHARS] + " ..."
    return (
        f"keras.models.load_model cannot restore the {key!r} this {owner} was compiled "
        f"with: {name} ({type(error).__name__}: {detail}). Register it with "
        "@keras.saving.register_keras_serializable() in a module imported before loading, "
        f"or pass custom_objects={{{short!r}: ...}} to keras.models.load_model; or load "
        "with compile=False and call compile() yourself."
    )


def object_name(serialized: dict[str, Any]) -> str:
    """``module.name`` of a serialized Keras object (a function's or a class's)."""
    if serialized.get("class_name") == "function":
        name = str(serialized.get("config"))
    else:
        name = str(serialized.get("class_name"))
    module = serialized.get("module")
    return f"{module}.{name}" if module and module != "builtins" else name


def first_unrestorable(value: Any) -> dict[str, Any] | None:
    """The innermost serialized object in ``value`` that does not deserialize on its own
    (e.g. the schedule inside an optimizer's config), or None when every one does."""
    if isinstance(value, dict) and "class_name" in value:
        inner = first_unrestorable(value.get("config"))
        if inner is not None:
            return inner
        return None if _restores(value) else value
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, (list, tuple)):
        children = value
    else:
        return None
    for child in children:
        found = first_unrestorable(child)
        if found is not None:
            return found
    return None


def _restores(serialized: dict[str, Any]) -> bool:
    try:
        keras.saving.deserialize_keras_object(serialized)
    except Exception:
        return False
    return True


def build_optimizer_for(model: keras.Model) -> None:
    """Create ``model.optimizer``'s variables (``iterations``, slots, loss scale) on
    ``model.trainable_variables``, the list and order the train step applies to, so a
    variable load that follows fills them (Keras skips an unbuilt optimizer's state
    with a warning).  No-op when the optimizer is built or the model has no variables."""
    optimizer = getattr(model, "optimizer", None)
    variables = model.trainable_variables
    if optimizer is not None and not optimizer.built and variables:
        optimizer.build(variables)


__all__ = [
    "build_optimizer_for",
    "deserialize_compile_config",
    "first_unrestorable",
    "object_name",
    "unrestorable_message",
]
