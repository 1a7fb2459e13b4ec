"""What a caller hands to ``fit`` / ``evaluate`` / ``predict``, made what the network takes.

Raw text goes through the network's ``preprocessor`` (keras-hub's shape; e.g.
``PerturbableBertClassifier.from_preset("bundled")`` attaches one):

* a batch of strings (a list / tuple / NumPy array of ``str``), a pair
  ``(first_strings, second_strings)`` for sentence-pair tasks, or a list of one or two
  text columns (``TextSplit.texts``, as ``load_text_task`` gives it): tokenised once,
  eagerly, into NumPy int32 arrays, so ``model.fit(texts, labels, batch_size=32)`` works;
* a ``tf.data.Dataset`` whose ``x`` is strings (``x``, ``(x, y)`` or ``(x, y, w)``
  elements; ``x`` a string tensor or a pair of them): mapped through the preprocessor.

Anything else (the tokenised dict, arrays, other datasets) passes unchanged.  Labels given
as a list become a NumPy array.  Only ``tf.data`` needs TensorFlow here (a JAX backend
takes the other inputs as they are).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def is_text_column(x: Any) -> bool:
    """True for a non-empty list / tuple / NumPy array of strings (one text column)."""
    if isinstance(x, np.ndarray):
        if x.ndim != 1 or x.size == 0:
            return False
        return x.dtype.kind in "US" or (
            x.dtype == object and all(isinstance(v, (str, bytes)) for v in x)
        )
    return (
        isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, (str, bytes)) for v in x)
    )


def is_raw_text(x: Any) -> bool:
    """True for what ``adapt_inputs`` tokenises eagerly: one text column, a pair
    ``(first, second)`` of equally long columns, or a list of one or two columns."""
    if is_text_column(x):
        return True
    if isinstance(x, (tuple, list)) and len(x) in (1, 2):
        return all(is_text_column(c) for c in x) and len({len(c) for c in x}) == 1
    return False


def _string_dataset_x(spec: Any) -> str | None:
    """Where a dataset element's strings are: ``"x"`` (the element is x), ``"first"``
    (x is its first item, labels follow), or None (no raw strings)."""
    import tensorflow as tf

    def strings(s: Any) -> bool:
        if isinstance(s, tf.TensorSpec):
            return s.dtype == tf.string
        return isinstance(s, tuple) and len(s) == 2 and all(strings(p) for p in s)

    if isinstance(spec, tf.TensorSpec):
        return "x" if strings(spec) else None
    if isinstance(spec, tuple) and len(spec) == 2 and strings(spec):
        return "x"  # a pair of string columns, no labels
    if isinstance(spec, tuple) and len(spec) in (2, 3) and strings(spec[0]):
        return "first"
    return None


def _is_tf_dataset(x: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)


def _map_dataset(preprocessor: Any, dataset: Any, where: str) -> Any:
    """``dataset`` with its strings mapped through ``preprocessor`` (tf.data, in parallel)."""
    import tensorflow as tf

    if where == "x":  # tf.data passes a pair element as two arguments
        return dataset.map(
            lambda *x: preprocessor(x if len(x) > 1 else x[0]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.map(
        lambda x, *rest: (preprocessor(x), *rest), num_parallel_calls=tf.data.AUTOTUNE
    )


def require_preprocessor(network: Any) -> Any:
    """``network.preprocessor``, or a ``ValueError`` saying how to attach one."""
    preprocessor = getattr(network, "preprocessor", None)
    if preprocessor is None:
        name = type(network).__name__
        raise ValueError(
            f"{name} has no preprocessor, so it cannot take raw strings. Build it with "
            f'its preprocessor: {name}.from_preset("bundled") (or a folder / keras-hub '
            "preset; load_text_classifier(preset) picks BERT or RoBERTa), or attach one: "
            "network.preprocessor = TextClassifierPreprocessor(tokenizer, "
            "sequence_length=128) (adv_large_batch.models.text_preprocessor); or pass the "
            "tokenised dict (token_ids, segment_ids, padding_mask)"
        )
    return preprocessor


def preprocess(preprocessor: Any, x: Any) -> dict[str, np.ndarray]:
    """Raw text -> the input dict as NumPy int32 arrays, tokenised once, eagerly."""
    if hasattr(preprocessor, "encode"):
        return preprocessor.encode(x)
    if isinstance(x, list) and not is_text_column(x):
        x = tuple(x)  # a list of text columns -> (first, second)
    return {k: np.asarray(v).astype(np.int32) for k, v in preprocessor(x).items()}


def adapt_inputs(network: Any, x: Any, y: Any = None) -> tuple[Any, Any]:
    """``(x, y)`` as ``network`` takes them.

    Raw text (``is_raw_text``, or a ``tf.data.Dataset`` of strings) goes through
    ``network.preprocessor`` (``ValueError`` when it has none); everything else is
    returned unchanged.  ``y`` given as a list becomes a NumPy array.

    Example:

    ```python
    from adv_large_batch.engine.inputs import adapt_inputs
    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier

    network = PerturbableBertClassifier.from_preset("tiny-random", sequence_length=16)
    x, y = adapt_inputs(network, ["a gripping film", "dull"], [1, 0])
    x["token_ids"].shape, y   # (2, 16), array([1, 0])
    ```
    """
    if isinstance(y, list):
        y = np.asarray(y)
    if _is_tf_dataset(x):
        where = _string_dataset_x(x.element_spec)
        if where is not None:
            x = _map_dataset(require_preprocessor(network), x, where)
        return x, y
    if is_raw_text(x):
        return preprocess(require_preprocessor(network), x), y
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(is_text_column(c) for c in x):
        raise ValueError(
            f"a sentence pair needs two text columns of one length, got {len(x[0])} and "
            f"{len(x[1])} texts"
        )
    return x, y


def batch_spec(x: Any, y: Any = None) -> Any:
    """The structure of one batch of ``fit(x, y)``'s data, for building the optimizer's and
    metrics' variables before the step is traced: a ``tf.data.Dataset``'s
    ``element_spec``; for arrays (NumPy or anything with ``shape`` and ``dtype``, nested in
    dicts, lists and tuples), ``(x, y)`` (``x`` alone when ``y`` is None) with each array as
    a ``keras.KerasTensor`` of unknown first axis.  ``None`` for anything else (a
    generator, a ``PyDataset``, Python lists of numbers): the first trace builds then.

    Example:

    ```python
    import numpy as np
    from adv_large_batch.engine.inputs import batch_spec

    x, y = batch_spec({"token_ids": np.zeros((64, 16), "int32")}, np.zeros(64, "int32"))
    x["token_ids"].shape, y.dtype   # (None, 16), 'int32'
    batch_spec(iter([1, 2]))        # None
    ```
    """
    if _is_tf_dataset(x):
        return x.element_spec
    import keras

    data = (x, y) if y is not None else x
    leaves = keras.tree.flatten(data)
    if not leaves or not all(hasattr(v, "shape") and len(v.shape) >= 1 for v in leaves):
        return None
    return keras.tree.map_structure(
        lambda v: keras.KerasTensor((None, *v.shape[1:]), keras.backend.standardize_dtype(v.dtype)),
        data,
    )


__all__ = ["adapt_inputs", "batch_spec", "is_raw_text", "is_text_column", "require_preprocessor"]
