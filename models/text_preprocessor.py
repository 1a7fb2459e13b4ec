"""Raw strings -> the dict a text classifier takes: ``TextClassifierPreprocessor``.

keras-hub's shape: a classifier carries a preprocessor layer holding keras-hub's own
tokenizer (``BertTokenizer`` WordPiece or ``RobertaTokenizer`` byte-level BPE, loaded with
the checkpoint's casing rules) and keras-hub's ``MultiSegmentPacker``.  The packing is the
one the command line trains on (``data.text_pipeline.tokenize`` calls ``encode`` here):
``[CLS] a [SEP] b [SEP]`` for BERT, ``<s> a </s></s> b </s>`` for RoBERTa, truncated
round-robin to ``sequence_length`` and padded with the tokenizer's pad id.

Input: a batch of strings, or a pair ``(first_strings, second_strings)`` for sentence-pair
tasks.  Output: ``token_ids``, ``segment_ids``, ``padding_mask``, ``[batch,
sequence_length]`` int32 (NumPy when called eagerly, tensors inside ``tf.data``).
"""

from __future__ import annotations

from typing import Any

import keras
import keras_hub
import numpy as np

from adv_large_batch.models.encoder_presets import DEFAULT_SEQUENCE_LENGTH
from adv_large_batch.models.inputs import PADDING_MASK, SEGMENT_IDS, TOKEN_IDS

#: Examples tokenised per call by ``encode`` (bounds the memory of one call).
ENCODE_CHUNK = 4096


def packing_tokens(tokenizer: Any) -> dict[str, Any]:
    """The special tokens that frame packed segments, per tokenizer family.

    BERT (WordPiece, has ``cls_token_id``): ``[CLS] a [SEP] b [SEP]``.  RoBERTa
    (byte-level BPE, ``start_token_id`` / ``end_token_id``): ``<s> a </s></s> b </s>``,
    as ``keras_hub.models.RobertaTextClassifierPreprocessor`` packs.

    Example:

    ```python
    import keras_hub
    from adv_large_batch.models.text_preprocessor import packing_tokens

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "film"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    packing_tokens(tokenizer)  # {"start_value": 2, "end_value": 3, "sep_value": None, ...}
    ```
    """
    if hasattr(tokenizer, "cls_token_id"):
        start, end, sep = tokenizer.cls_token_id, tokenizer.sep_token_id, None  # sep = end
    else:
        start, end = tokenizer.start_token_id, tokenizer.end_token_id
        sep = [end, end]
    return {
        "start_value": start,
        "end_value": end,
        "sep_value": sep,
        "pad_value": tokenizer.pad_token_id,
    }


def as_segments(x: Any) -> tuple[Any, ...]:
    """``x`` as a tuple of text columns: a pair ``(first, second)`` (or a list of one or two
    columns, as ``TextSplit.texts`` holds them) as they are, anything else as one column."""
    if isinstance(x, (tuple, list)) and 1 <= len(x) <= 2:
        if not any(isinstance(column, (str, bytes)) for column in x):
            return tuple(x)
    return (x,)


@keras.saving.register_keras_serializable(package="adv_large_batch")
class TextClassifierPreprocessor(keras_hub.models.Preprocessor):
    """Strings (or ``(first, second)`` string pairs) -> ``token_ids`` / ``segment_ids`` /
    ``padding_mask``, with keras-hub's tokenizer and ``MultiSegmentPacker``.

    Args:
        tokenizer: a keras-hub ``BertTokenizer`` or ``RobertaTokenizer`` (e.g.
            ``load_bert_tokenizer(folder)``, which follows the folder's casing rules).
        sequence_length: tokens per example after packing (padded, truncated round-robin).

    ``get_config`` serialises the tokenizer the keras-hub way (its vocabulary travels as an
    asset, so a ``.keras`` file keeps it).  ``call`` takes ``x`` only (no labels); ``encode``
    tokenises any number of examples eagerly, in chunks, into NumPy int32 arrays.

    Example:

    ```python
    from adv_large_batch.models.perturbable_bert import load_bert_tokenizer
    from adv_large_batch.models.text_preprocessor import TextClassifierPreprocessor

    preprocessor = TextClassifierPreprocessor(load_bert_tokenizer("bundled"), sequence_length=16)
    single = preprocessor(["a gripping film", "dull"])          # token_ids: (2, 16) int32
    pairs = preprocessor((["who wrote it?"], ["she did."]))     # [CLS] a [SEP] b [SEP]
    features = preprocessor.encode(["a gripping film"] * 10)    # NumPy, (10, 16) each
    ```
    """

    def __init__(
        self,
        tokenizer: Any,
        sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
        truncate: str = "round_robin",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(sequence_length, int) or isinstance(sequence_length, bool):
            raise ValueError(f"sequence_length must be an int >= 2, got {sequence_length!r}")
        if sequence_length < 2:
            raise ValueError(f"sequence_length must be an int >= 2, got {sequence_length}")
        self.tokenizer = tokenizer
        self.packer = None
        self.sequence_length = sequence_length
        self.truncate = truncate

    def build(self, input_shape: Any = None) -> None:
        # The packer is made here, not in __init__: after a .keras load the tokenizer's
        # vocabulary (and so its special token ids) arrives with the assets, after __init__.
        super().build(input_shape)
        self.packer = keras_hub.layers.MultiSegmentPacker(
            **packing_tokens(self.tokenizer),
            sequence_length=self.sequence_length,
            truncate=self.truncate,
        )

    def call(self, x: Any) -> dict[str, Any]:
        """``x``: strings, or ``(first_strings, second_strings)``; one example or a batch."""
        segments = tuple(self.tokenizer(column) for column in as_segments(x))
        token_ids, segment_ids = self.packer(segments if len(segments) > 1 else segments[0])
        padding_mask = token_ids != self.tokenizer.pad_token_id
        if self._use_tf_workflow():  # inside tf.data / tf.function: tensors
            import tensorflow as tf

            cast = lambda v: tf.cast(v, tf.int32)  # noqa: E731
        else:
            cast = lambda v: np.asarray(v, np.int32)  # noqa: E731
        return {
            TOKEN_IDS: cast(token_ids),
            SEGMENT_IDS: cast(segment_ids),
            PADDING_MASK: cast(padding_mask),
        }

    def encode(self, x: Any, chunk_size: int = ENCODE_CHUNK) -> dict[str, np.ndarray]:
        """Tokenise a whole split eagerly: ``[N, sequence_length]`` NumPy int32 arrays.

        ``x`` as ``call`` takes it (also a list of one or two text columns, as
        ``TextSplit.texts`` holds them); ``chunk_size`` examples per call.
        """
        columns = [list(column) for column in as_segments(x)]
        out: dict[str, list[np.ndarray]] = {TOKEN_IDS: [], SEGMENT_IDS: [], PADDING_MASK: []}
        for start in range(0, len(columns[0]), chunk_size):
            chunk = tuple(column[start : start + chunk_size] for column in columns)
            for key, value in self(chunk if len(chunk) > 1 else chunk[0]).items():
                out[key].append(np.asarray(value, np.int32))
        if not out[TOKEN_IDS]:
            empty = np.zeros((0, self.sequence_length), np.int32)
            return {key: empty.copy() for key in out}
        return {key: np.concatenate(values) for key, values in out.items()}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length, "truncate": self.truncate})
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TextClassifierPreprocessor:
        # keras-hub's from_config replaces the tokenizer entry in place: leave ours intact.
        return super().from_config(dict(config))

    @property
    def sequence_length(self) -> int:
        """Tokens per example after packing."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value: int) -> None:
        self._sequence_length = value
        if self.packer is not None:
            self.packer.sequence_length = value


__all__ = [
    "DEFAULT_SEQUENCE_LENGTH",
    "TextClassifierPreprocessor",
    "as_segments",
    "packing_tokens",
]
