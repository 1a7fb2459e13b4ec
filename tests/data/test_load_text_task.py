"""``load_text_task``: a task's raw splits from Python, capped by ``limit``."""

from pathlib import Path

import numpy as np
import pytest

from adv_large_batch.data.text_tasks import load_text_task
from adv_large_batch.flags import ConfigError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "glue"


def test_rotten_tomatoes_is_cut_to_the_limit():
    task = load_text_task("rotten_tomatoes", limit=8)
    assert task.num_classes == 2 and task.metrics == ("accuracy",)
    for split in (task.train, task.validation, task.test):
        assert len(split) == 8 and len(split.texts) == 1 and len(split.texts[0]) == 8
        assert all(isinstance(t, str) and t for t in split.texts[0])
        assert isinstance(split.labels, np.ndarray) and set(split.labels.tolist()) <= {0, 1}
    full = load_text_task("rotten_tomatoes")
    assert len(full.train) > 10_000 and full.train.texts[0][:8] == task.train.texts[0]


def test_glue_pairs_from_the_tsv_folders():
    task = load_text_task("mrpc", limit=2, data_dir=str(FIXTURES))
    assert len(task.train) == 2 and len(task.train.texts) == 2  # (first, second) columns
    assert len(task.validation) <= 2 and task.metrics == ("accuracy", "f1")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "8"])
def test_a_bad_limit_names_the_argument(limit):
    with pytest.raises(ValueError, match=f"limit={limit!r}: must be a positive int"):
        load_text_task("rotten_tomatoes", limit=limit)


def test_missing_glue_data_names_the_argument(tmp_path):
    with pytest.raises(ConfigError, match=r"load_text_task\('sst2'\) needs data_dir="):
        load_text_task("sst2")
    with pytest.raises(FileNotFoundError, match=r"source='tsv', data_dir='.*'\): .*SST-2"):
        load_text_task("sst2", source="tsv", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="name='imdb': must be one of"):
        load_text_task("imdb")
