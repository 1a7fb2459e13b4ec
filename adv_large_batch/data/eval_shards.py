"""One evaluation batch split over the processes of a data-parallel job.

A data-parallel evaluation step shards its batch over every device of the job, so the
batch must have a multiple of ``multiple`` rows (the job's device count), and each
process feeds only its own rows (Keras' JAX backend assembles the global batch from the
processes' parts, in process order).  ``eval_shard`` pads a batch of ``rows`` rows to
the next multiple of ``multiple`` with copies of its first row, weighted 0, and gives
process ``rank`` of ``size`` its contiguous slice.  Weighted metrics then count every
real row exactly once, on any number of devices and processes.

```python
from adv_large_batch.data.eval_shards import eval_shard

index, weights = eval_shard(rows=5, multiple=4, rank=1, size=2)
assert index.tolist() == [4, 0, 0, 0] and weights.tolist() == [1.0, 0.0, 0.0, 0.0]
```
"""

from __future__ import annotations

import numpy as np

from adv_large_batch.flags import ConfigError


def eval_shard(rows: int, multiple: int, rank: int = 0, size: int = 1) -> tuple[np.ndarray, ...]:
    """``(index, weights)`` of process ``rank``'s part of a batch of ``rows`` rows: the
    batch padded to a multiple of ``multiple`` rows (padding: row 0, weight 0), split into
    ``size`` contiguous equal slices.  ``index`` (int64) selects the rows from the
    unpadded batch, ``weights`` (float32) is 1 for real rows.  ``ConfigError`` unless
    ``rows >= 1``, ``0 <= rank < size`` and ``size`` divides ``multiple``."""
    if rows < 1 or not 0 <= rank < size or multiple < 1 or multiple % size:
        raise ConfigError(
            "eval_shard needs rows >= 1, 0 <= rank < size and multiple a multiple of size, got "
            f"rows={rows!r}, rank={rank!r}, size={size!r}, multiple={multiple!r}"
        )
    padded = -(-rows // multiple) * multiple
    index = np.concatenate([np.arange(rows), np.zeros(padded - rows, np.int64)])
    weights = (np.arange(padded) < rows).astype(np.float32)
    share = slice(rank * padded // size, (rank + 1) * padded // size)
    return index[share], weights[share]


__all__ = ["eval_shard"]
