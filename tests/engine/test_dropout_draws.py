"""The keyed dropout draws (``engine.randomness``) are dropout: one process, dropout on.

The trainer overwrites every seed generator's state before each forward pass, so a
mistake there (one key for every micro-batch, every layer or every step) would still
train, only with correlated masks, and no equivalence test would notice.  A network whose
gradient is its masks reads them back: input ones -> two Dropout(0.5) layers -> a sum
with unit weights, SGD with LR 1, so the weight change of a step is the average over the
step's micro-batches of each unit's scaled mask (in {0, 2} per micro-batch).
"""

import keras
import numpy as np

from adv_large_batch.engine.trainer import AccumulatingTrainer

UNITS = 4000
MICRO_BATCHES = 4


def _mask_averages(steps: int) -> list[np.ndarray]:
    inputs = keras.Input((UNITS,))
    both = keras.layers.Concatenate()(
        [keras.layers.Dropout(0.5)(inputs), keras.layers.Dropout(0.5)(inputs)]
    )
    head = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    trainer = AccumulatingTrainer(keras.Model(inputs, head(both)), micro_batch_size=1, seed=0)
    trainer.compile(optimizer=keras.optimizers.SGD(1.0), loss=lambda y, p: keras.ops.mean(p))
    x = np.ones((MICRO_BATCHES, UNITS), "float32")
    y = np.zeros((MICRO_BATCHES, 1), "float32")
    out = []
    for _ in range(steps):
        before = head.kernel.numpy()[:, 0].copy()
        trainer.fit(x, y, batch_size=MICRO_BATCHES, epochs=1, verbose=0, shuffle=False)
        out.append(before - head.kernel.numpy()[:, 0])
    return out


def test_dropout_masks_are_independent_across_micro_batches_layers_and_steps():
    steps = _mask_averages(steps=2)
    for g in steps:
        # Micro-batches draw their own masks: the average of 4 masks in {0, 2} takes all
        # of 0, 0.5, ..., 2 (one shared mask would give only 0 and 2).
        assert set(np.round(g, 4)) == {0.0, 0.5, 1.0, 1.5, 2.0}
        # The configured rate: mean kept-and-scaled value 1 (sd of the mean ~0.008).
        assert abs(g.mean() - 1.0) < 0.05
        # The two layers draw different masks (the same key per layer would give corr 1).
        assert abs(np.corrcoef(g[:UNITS], g[UNITS:])[0, 1]) < 0.1
    # Steps draw different masks (one key per run would repeat them).
    assert abs(np.corrcoef(steps[0], steps[1])[0, 1]) < 0.1
