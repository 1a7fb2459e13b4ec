"""The ``limit=`` of the notebook loaders (``load_text_task``, ``load_image_task``)."""

from __future__ import annotations

import numpy as np

from adv_large_batch.flags import ConfigError


def check_limit(limit: object) -> int | None:
    """``limit`` when it is None (every example) or a positive int (the first N examples of
    each split), else ``ConfigError`` (a ``ValueError``) naming ``limit=`` and the value."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ConfigError(
            f"limit={limit!r}: must be a positive int (the first N examples of each split) "
            "or None (all)"
        )
    return int(limit)


__all__ = ["check_limit"]
