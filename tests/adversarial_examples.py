"""``examples_agree``: how two runs' adversarial images are compared.

An example is ``x + step * sign(g)`` (projected). Two runs whose weights differ by float
rounding (another backend, another all-reduce order) give input gradients that differ by
rounding too, so an entry of ``g`` within rounding of zero may take the other sign there:
that pixel then moves by ``2 * step`` in the other direction. Every other pixel must agree
to 1e-6. A run that made different examples (wrong batch, wrong weights, wrong step) moves
far more than a handful of pixels, so the check still tells them apart.
"""

from __future__ import annotations

import numpy as np

#: At most this fraction of pixels may sit on the other side of a zero gradient.
FLIPPED = 1e-4


def examples_agree(got: np.ndarray, want: np.ndarray, step: float) -> bool:
    """True when ``got`` equals ``want`` to 1e-6 except at most ``FLIPPED`` of the pixels,
    each off by at most ``2 * step`` (a sign taken on the other side of zero)."""
    if got.shape != want.shape:
        return False
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    off = diff > 1e-6
    return bool(off.mean() <= FLIPPED and diff.max() <= 2 * step + 1e-6)
