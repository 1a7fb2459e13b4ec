"""The contracts every model of this library keeps: text input keys, dynamic padding, the
interface a perturbable classifier offers ScaLA, and the image input check.

Every text pipeline (``adv_large_batch.data.text_pipeline``) produces a dict of
``[batch, length]`` int arrays under ``TOKEN_IDS``, ``SEGMENT_IDS`` and ``PADDING_MASK``;
every classifier takes it.  ScaLA perturbs the token-embedding output, so a text
classifier it trains must offer ``PerturbableClassifier``'s three members.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import keras

from adv_large_batch.flags import ConfigError

#: Every image model takes, and every image pipeline gives, float pixels in this range.
IMAGE_RANGE = (0.0, 1.0)

# Keys of the dict that every text pipeline of this project produces.
TOKEN_IDS = "token_ids"
SEGMENT_IDS = "segment_ids"
PADDING_MASK = "padding_mask"


def trim_to_longest(inputs: dict[str, Any]) -> dict[str, Any]:
    """Cut padding columns that no example in the batch uses.

    Batches arrive padded to a fixed length (one traced graph); trimming to the
    longest real sequence inside the step gives dynamic padding without
    retracing.  The result has a dynamic sequence dimension, which only TensorFlow's
    graphs have: on another Keras backend (JAX: static shapes for XLA) the inputs are
    returned as they are (padding included; the JAX trainer, not built yet, is to pad
    to length buckets instead).
    """
    if keras.config.backend() != "tensorflow":
        return inputs
    import tensorflow as tf

    mask = tf.cast(inputs[PADDING_MASK], tf.int32)
    longest = tf.maximum(tf.reduce_max(tf.reduce_sum(mask, axis=1)), 1)
    return {key: value[:, :longest] for key, value in inputs.items()}


@runtime_checkable
class PerturbableClassifier(Protocol):
    """A text classifier whose token-embedding output can be perturbed (ScaLA §3.1).

    ``logits_from_embeddings(embed_tokens(ids) + y, inputs)`` is the model on the
    perturbed input; with ``y = 0`` it equals ``model(inputs)``.  Implemented by
    ``PerturbableBertClassifier`` and ``PerturbableRobertaClassifier``.
    """

    num_classes: int

    def embed_tokens(self, token_ids: Any) -> Any:
        """The token-embedding output e, ``[batch, length, hidden]`` (before position,
        segment embeddings and the embedding LayerNorm)."""
        ...

    def logits_from_embeddings(
        self, token_embeddings: Any, inputs: dict[str, Any], training: bool = False
    ) -> Any:
        """Everything after the token lookup, on (possibly perturbed) embeddings."""
        ...


def check_image_shape(name: str, input_shape: tuple[int, ...], smallest: int) -> None:
    """Raise ``ConfigError`` unless ``input_shape`` is (height, width, channels) with both
    sides at least ``smallest`` (model ``name``'s total down-sampling)."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"--model {name} takes (height, width, channels) images, got {input_shape}"
        )
    height, width, channels = input_shape
    if min(height, width) < smallest:
        raise ConfigError(
            f"--model {name} needs images of at least {smallest}x{smallest}, got {height}x{width}"
        )
    if channels < 1:
        raise ConfigError(f"--model {name}: images need at least one channel, got {input_shape}")


__all__ = [
    "IMAGE_RANGE",
    "PADDING_MASK",
    "SEGMENT_IDS",
    "TOKEN_IDS",
    "PerturbableClassifier",
    "check_image_shape",
    "trim_to_longest",
]
