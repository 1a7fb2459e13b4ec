"""Tokenised text as batches: WordPiece/BPE packing, evaluation batches and the
resumable training stream, as tf.data (TensorFlow) or NumPy (JAX).

Texts are tokenised once (pairs packed as ``[CLS] a [SEP] b [SEP]``, RoBERTa's
``<s> a </s></s> b </s>``) into fixed-length arrays.  On TensorFlow
(``make_epoch_stream``, ``make_eval_dataset``) the train step trims each micro-batch to
its longest sequence, which gives dynamic padding with one traced graph.  On JAX
(``make_epoch_batches``, ``make_eval_batches``; no TensorFlow) XLA needs static shapes:
each batch is trimmed to the smallest length bucket that holds its longest sequence
(``bucket_length``), so only a handful of programs are compiled.  Both training streams
draw the same global batches in the same order (``_epoch_indices``); the NumPy one
splits each, sorted by length, into contiguous per-process slices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np

from adv_large_batch.data.eval_shards import eval_shard
from adv_large_batch.data.text_tasks import TextSplit
from adv_large_batch.flags import ConfigError
from adv_large_batch.models.inputs import PADDING_MASK
from adv_large_batch.models.text_preprocessor import TextClassifierPreprocessor, packing_tokens

#: Sequence lengths a JAX batch is trimmed to (the smallest that holds its longest row).
BUCKETS = (16, 32, 64, 128, 256, 512)


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


def _epoch_indices(
    num_examples: int,
    batch_size: int,
    epochs: int,
    seed: int,
    rank: int,
    size: int,
    start_step: int,
) -> np.ndarray:
    """The example indices of rank ``rank``'s training batches, epoch after epoch, from
    global step ``start_step`` on (consecutive runs of ``batch_size``: one batch each).

    Epoch e shuffles with ``epoch_order(N, e, seed)``; rank r of ``size`` takes every
    size-th example of it, dropping the remainder so every step sees ``batch_size`` rows.
    ``ConfigError`` when not one full batch per epoch fits.
    """
    steps = (num_examples // size) // batch_size
    if steps < 1:
        raise ConfigError(
            f"batch size {batch_size} per worker is larger than the {num_examples // size} "
            "training examples each worker has: not one full step per epoch"
        )
    order = np.concatenate(
        [
            epoch_order(num_examples, e, seed)[rank::size][: steps * batch_size]
            for e in range(epochs)
        ]
    )
    return order[start_step * batch_size :]


def bucket_length(padding_mask: np.ndarray, width: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The sequence length a batch is trimmed to: the smallest of ``buckets`` that holds
    its longest real sequence (``padding_mask`` row sums), at most ``width`` (the arrays'
    length, ``--max-seq-length``)."""
    longest = int(np.max(np.sum(padding_mask != 0, axis=1), initial=1))
    return min([b for b in sorted(buckets) if b >= longest] + [width])


def _trimmed(features: dict[str, np.ndarray], buckets: Sequence[int]) -> dict[str, np.ndarray]:
    """``features`` (one batch) with every [B, width] array cut to ``bucket_length``."""
    width = features[PADDING_MASK].shape[1]
    length = bucket_length(features[PADDING_MASK], width, buckets)
    return {
        k: v[:, :length] if v.ndim == 2 and v.shape[1] == width else v for k, v in features.items()
    }


def make_epoch_batches(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int,
    epochs: int,
    seed: int = 0,
    rank: int = 0,
    size: int = 1,
    start_step: int = 0,
    buckets: Sequence[int] = BUCKETS,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """``make_epoch_stream`` in NumPy (the JAX backend; no TensorFlow): the same global
    batches (the rows of all ``size`` processes at a step) in the same order
    (``_epoch_indices``), laid out for XLA and data parallelism:

    * each global batch is sorted by sequence length (stable) and trimmed to the
      ``bucket_length`` of its longest row (the rows themselves unchanged: only padding
      is dropped), so every process feeds the same shape, as a multi-process step needs;
    * process ``rank`` of ``size`` gets the ``rank``-th contiguous ``batch_size`` rows of
      it (a per-process batch of ``batch_size``), so the job's devices hold the sorted
      global batch in order.  The trainer sorts each device's rows by length (stably: a
      no-op on a sorted slice) before splitting them into micro-batches, so P devices or
      processes make exactly the micro-batches one device makes from the global batch,
      and the dropout masks and random starts keyed by global micro-batch index fall on
      the same rows.

    A generator over all remaining batches of the run, for ``fit`` with
    ``steps_per_epoch``.  The order is computed (and a batch too large refused with
    ``ConfigError``) when this is called, not when iterated.
    """
    _epoch_indices(len(labels), batch_size, epochs, seed, rank, size, start_step)  # checks
    whole = batch_size * size
    order = _epoch_indices(len(labels), whole, epochs, seed, 0, 1, start_step)
    labels = np.asarray(labels)
    lengths = np.sum(features[PADDING_MASK] != 0, axis=1)
    share = slice(rank * batch_size, (rank + 1) * batch_size)

    def batches() -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        for first in range(0, len(order) - whole + 1, whole):
            index = order[first : first + whole]
            index = index[np.argsort(lengths[index], kind="stable")]
            batch = _trimmed({k: v[index] for k, v in features.items()}, buckets)
            yield {k: v[share] for k, v in batch.items()}, labels[index][share]

    return batches()


class _EvalBatches(keras.utils.PyDataset):
    """``make_eval_batches``' re-iterable batches (``predict`` / ``fit``'s validation)."""

    def __init__(
        self,
        features: dict[str, np.ndarray],
        labels: np.ndarray,
        batch_size: int,
        buckets: Sequence[int],
        shard: tuple[int, int, int],
    ) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.features, self.labels = features, np.asarray(labels)
        self.batch_size, self.buckets = batch_size, tuple(buckets)
        self.rank, self.size, self.multiple = shard

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        features = _trimmed({k: v[part] for k, v in self.features.items()}, self.buckets)
        labels = self.labels[part]
        if self.multiple == 1 and self.size == 1:
            return features, labels
        index, weights = eval_shard(len(labels), self.multiple, self.rank, self.size)
        return {k: v[index] for k, v in features.items()}, labels[index], weights


def make_eval_batches(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    batch_size: int,
    buckets: Sequence[int] = BUCKETS,
    rank: int = 0,
    size: int = 1,
    multiple: int = 1,
) -> keras.utils.PyDataset:
    """``make_eval_dataset`` in NumPy (the JAX backend): ``(features, labels)`` batches in
    order (the last one may be smaller), each trimmed to ``bucket_length``; a
    ``keras.utils.PyDataset``, so ``predict`` and ``fit(validation_data=...)`` can read it
    again every epoch.

    For data parallelism (every row counted once, every batch shardable over the job's
    devices): ``multiple`` (the job's device count, a multiple of ``size``) pads each
    batch with weight-0 rows to a multiple of it, and process ``rank`` of ``size`` gets
    its contiguous slice (``eval_shards.eval_shard``); batches are then ``(features,
    labels, weights)``, trimmed to the bucket of the whole batch, so every process feeds
    the same shape.  ``engine.predict.predict_rows`` turns them back into one output row
    per example.  ``ConfigError`` for a bad shard."""
    eval_shard(1, multiple, rank, size)  # the arguments' check, now
    return _EvalBatches(features, labels, batch_size, buckets, (rank, size, multiple))


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

    order = _epoch_indices(len(labels), batch_size, epochs, seed, rank, size, start_step)
    features = {k: tf.constant(v) for k, v in features.items()}
    labels_t = tf.constant(labels)

    def gather(index: Any) -> Any:
        return {k: tf.gather(v, index) for k, v in features.items()}, tf.gather(labels_t, index)

    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


__all__ = [
    "BUCKETS",
    "bucket_length",
    "epoch_order",
    "make_epoch_batches",
    "make_epoch_stream",
    "make_eval_batches",
    "make_eval_dataset",
    "packing_tokens",
    "tokenize",
]
