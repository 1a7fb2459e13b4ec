"""A tiny random BERT and synthetic token batches for fast tests."""

import keras
import keras_hub
import numpy as np

from adv_large_batch.engine.distributed import Backend
from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier

# The real one-process backend (``distributed.get_backend("single")`` without the cache).
SingleProcess = Backend


def tiny_classifier(seed=0, num_classes=2, dropout=0.0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dropout=dropout,
    )
    return PerturbableBertClassifier(backbone, num_classes=num_classes, dropout=dropout)


def token_batch(n=32, length=12, seed=0):
    rng = np.random.RandomState(seed)
    lengths = rng.randint(3, length + 1, n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype("int32")
    ids = rng.randint(5, 50, (n, length)) * mask
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}
    y = (ids[:, 1] > 25).astype("int32")
    return x, y
