"""Tasks and data: Rotten Tomatoes, GLUE TSV, GLUE via tensorflow-datasets, metrics."""

import numpy as np
import pytest

from adv_large_batch import glue_metrics, text_data
from adv_large_batch.config import ConfigError


def test_rotten_tomatoes_split_is_real_reproducible_and_disjoint():
    a = text_data.load_task("rotten_tomatoes")
    b = text_data.load_task("rotten_tomatoes")
    total = len(a.train) + len(a.validation) + len(a.test)
    assert total > 10_000  # ~12.8K labelled fresh/rotten snippets
    assert len(a.train) == int(0.8 * total)
    assert a.train.texts[0][:50] == b.train.texts[0][:50]
    assert set(np.unique(a.train.labels)) == {0, 1}
    assert not set(a.train.texts[0]) & set(a.validation.texts[0] + a.test.texts[0])
    assert 0.3 < a.train.labels.mean() < 0.7


def _write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] if header else []
    path.write_text("\n".join(lines + ["\t".join(r) for r in rows]) + "\n")


def test_glue_tsv_single_and_pair_tasks(tmp_path):
    _write_tsv(
        tmp_path / "SST-2" / "train.tsv",
        ["sentence", "label"],
        [["a fine film", "1"], ["dull", "0"]],
    )
    _write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"], [["great", "1"]])
    task = text_data.load_task("sst2", "auto", str(tmp_path))
    assert task.train.texts == [["a fine film", "dull"]]
    assert task.train.labels.tolist() == [1, 0]
    rows = [["0", "who?", "he did.", "entailment"], ["1", "why?", "no.", "not_entailment"]]
    header = ["index", "question", "sentence", "label"]
    _write_tsv(tmp_path / "QNLI" / "train.tsv", header, rows)
    _write_tsv(tmp_path / "QNLI" / "dev.tsv", header, rows[:1])
    qnli = text_data.load_task("qnli", "tsv", str(tmp_path))
    assert qnli.train.texts == [["who?", "why?"], ["he did.", "no."]]
    assert qnli.train.labels.tolist() == [0, 1]


def test_labels_outside_range_and_empty_split_are_rejected(tmp_path):
    _write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence", "label"], [["x", "1"], ["y", "7"]])
    _write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"], [["z", "1"]])
    with pytest.raises(ConfigError, match=r"labels \[7\] outside the class range \[0, 1\]"):
        text_data.load_task("sst2", "tsv", str(tmp_path))
    _write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"], [])
    _write_tsv(tmp_path / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], [])
    with pytest.raises(ConfigError, match="train split is empty"):
        text_data.load_task("rte", "tsv", str(tmp_path))
    with pytest.raises(ConfigError, match="--task must be one of"):
        text_data.load_task("imdb")


def test_glue_through_tensorflow_datasets_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        task = text_data.load_task("mrpc", "tfds")
    assert len(task.train) == 12 and len(task.train.texts) == 2
    assert task.metrics == ("accuracy", "f1")


def test_tokenize_packs_pairs_and_masks_padding():
    from adv_large_batch.finetune import default_model_path
    from adv_large_batch.models.perturbable_bert import load_bert_tokenizer

    tok = load_bert_tokenizer(default_model_path())
    split = text_data.TextSplit([["Héllo there", "a"], ["general kenobi", "b c"]], np.array([0, 1]))
    out = text_data.tokenize(split, tok, 12)
    ids, seg, mask = out["token_ids"], out["segment_ids"], out["padding_mask"]
    assert ids.shape == (2, 12)
    assert ids[0, 0] == tok.cls_token_id and (ids[0] == tok.sep_token_id).sum() == 2
    assert seg[0].max() == 1 and mask[0].sum() == (ids[0] != tok.pad_token_id).sum()
    assert tok.id_to_token(int(ids[0, 1])) == "hello"  # lower-cased, accent stripped


def test_glue_metrics_against_hand_values():
    y, p = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    assert glue_metrics.accuracy(y, p) == pytest.approx(0.6)
    assert glue_metrics.f1(y, p) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # MCC: tp=2 tn=1 fp=1 fn=1 -> (2-1)/sqrt(3*3*2*2)
    assert glue_metrics.matthews(y, p) == pytest.approx(1 / 6)
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert glue_metrics.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert glue_metrics.spearman(a, b) == pytest.approx(1 - 6 * 2 / (4 * 15))
    logits = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert glue_metrics.task_metrics(("accuracy",), np.array([1, 1]), logits) == {"accuracy": 0.5}
