"""Shared pytest helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def require_horovod() -> Path:
    """The ``horovodrun`` next to this Python, for tests marked ``@pytest.mark.horovod``.

    Skips when Horovod (with Gloo) is not installed, unless ``ALB_REQUIRE_HOROVOD=1`` (set in
    CI), in which case the test fails with how to build it.
    """
    from adv_large_batch.engine.distributed import horovod_build_info

    info = horovod_build_info()
    horovodrun = Path(sys.executable).parent / "horovodrun"
    problem = None
    if not info["installed"]:
        problem = f"Horovod is not installed ({info['error']})"
    elif not info["gloo"]:
        problem = f"Horovod {info['version']} was built without Gloo"
    elif not horovodrun.exists():
        problem = f"no horovodrun at {horovodrun}"
    if problem is None:
        return horovodrun
    hint = f"build it with: PYTHON={sys.executable} bash horovodrun_scripts/build_horovod.sh"
    if os.environ.get("ALB_REQUIRE_HOROVOD") == "1":
        pytest.fail(f"{problem}, but ALB_REQUIRE_HOROVOD=1; {hint}", pytrace=False)
    pytest.skip(f"{problem}; {hint}")


@pytest.fixture
def horovodrun() -> Path:
    """Path of ``horovodrun``; see :func:`require_horovod`."""
    return require_horovod()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (the minutes-long end-to-end runs) first, the rest after, each
    group in collection order.  With pytest-xdist's workers fed one test at a time
    (``scripts/test.sh``: ``--maxschedchunk 1``) the long runs start at once and the short
    tests fill in around them, rather than one long run starting last while the other
    worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
