"""Tokenised text as tf.data: WordPiece/BPE packing, evaluation batches and the
resumable training stream.

Texts are tokenised once (pairs packed as ``[CLS] a [SEP] b [SEP]``, RoBERTa's
``<s> a </s></s> b </s>``) into fixed-length arrays; the train step trims each
micro-batch to its longest sequence, which gives dynamic padding with one traced graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adv_large_batch.data.text_tasks import TextSplit
from adv_large_batch.flags import ConfigError
from adv_large_batch.models.text_preprocessor import TextClassifierPreprocessor, packing_tokens


# ---- tokenisation -----------------------------------------------------------------
def tokenize(split: TextSplit, tokenizer: Any, max_seq_length: int) -> dict[str, np.ndarray]:
    """Token ids, segment ids and padding mask as [N, max_seq_length] int32 arrays.

    The packing of ``TextClassifierPreprocessor`` (``models/text_preprocessor.py``, what
    a classifier's ``preprocessor`` applies to raw strings): ``[CLS] a [SEP] b [SEP]``, or
    RoBERTa's ``<s> a </s></s> b </s>`` (``packing_tokens``), truncated round-robin.
    Segment ids are produced for every tokenizer; RoBERTa's classifier ignores them.
    """
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=max_seq_length)
    return preprocessor.encode(split.texts)


def make_eval_dataset(features: dict[str, np.ndarray], labels: np.ndarray, batch_size: int) -> Any:
    """Evaluation batches in order (the last one may be smaller), prefetched."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_order(num_examples: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffled example order of one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def make_epoch_stream(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int,
    epochs: int,
    seed: int = 0,
    rank: int = 0,
    size: int = 1,
    start_step: int = 0,
) -> Any:
    """All training batches of a run, epoch after epoch, from ``start_step`` on.

    Epoch e shuffles with ``epoch_order(N, e, seed)``; rank r of ``size`` takes
    every size-th example of it (disjoint shards), dropping the remainder so
    every step sees ``batch_size`` rows.  Because the order depends only on
    (seed, epoch), a run resumed at global step g continues with exactly the
    batch an uninterrupted run would have used (``start_step=g``).
    """
    import tensorflow as tf

    steps = (len(labels) // size) // batch_size
    if steps < 1:
        raise ConfigError(
            f"batch size {batch_size} per worker is larger than the {len(labels) // size} "
            "training examples each worker has: not one full step per epoch"
        )
    order = np.concatenate(
        [epoch_order(len(labels), e, seed)[rank::size][: steps * batch_size] for e in range(epochs)]
    )[start_step * batch_size :]
    features = {k: tf.constant(v) for k, v in features.items()}
    labels_t = tf.constant(labels)

    def gather(index: Any) -> Any:
        return {k: tf.gather(v, index) for k, v in features.items()}, tf.gather(labels_t, index)

    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


__all__ = [
    "epoch_order",
    "make_epoch_stream",
    "make_eval_dataset",
    "packing_tokens",
    "tokenize",
]
