"""Tasks and data: Rotten Tomatoes, GLUE TSV, GLUE via tensorflow-datasets, metrics."""

import json
from pathlib import Path

import numpy as np
import pytest

from adv_large_batch.data import glue_metrics, text_pipeline, text_tasks
from adv_large_batch.flags import ConfigError


def test_rotten_tomatoes_split_is_real_reproducible_and_disjoint():
    a = text_tasks.load_task("rotten_tomatoes")
    b = text_tasks.load_task("rotten_tomatoes")
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
    task = text_tasks.load_task("sst2", "auto", str(tmp_path))
    assert task.train.texts == [["a fine film", "dull"]]
    assert task.train.labels.tolist() == [1, 0]
    rows = [["0", "who?", "he did.", "entailment"], ["1", "why?", "no.", "not_entailment"]]
    header = ["index", "question", "sentence", "label"]
    _write_tsv(tmp_path / "QNLI" / "train.tsv", header, rows)
    _write_tsv(tmp_path / "QNLI" / "dev.tsv", header, rows[:1])
    qnli = text_tasks.load_task("qnli", "tsv", str(tmp_path))
    assert qnli.train.texts == [["who?", "why?"], ["he did.", "no."]]
    assert qnli.train.labels.tolist() == [0, 1]


def test_labels_outside_range_and_empty_split_are_rejected(tmp_path):
    _write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence", "label"], [["x", "1"], ["y", "7"]])
    _write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"], [["z", "1"]])
    with pytest.raises(ConfigError, match=r"labels \[7\] outside the class range \[0, 1\]"):
        text_tasks.load_task("sst2", "tsv", str(tmp_path))
    _write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"], [])
    _write_tsv(tmp_path / "RTE" / "dev.tsv", ["index", "sentence1", "sentence2", "label"], [])
    with pytest.raises(ConfigError, match="train split is empty"):
        text_tasks.load_task("rte", "tsv", str(tmp_path))
    with pytest.raises(ConfigError, match="--task must be one of"):
        text_tasks.load_task("imdb")


def test_glue_through_tensorflow_datasets_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        task = text_tasks.load_task("mrpc", "tfds")
    assert len(task.train) == 12 and len(task.train.texts) == 2
    assert task.metrics == ("accuracy", "f1")


def test_tokenize_packs_pairs_and_masks_padding():
    from adv_large_batch.models.perturbable_bert import load_bert_tokenizer
    from adv_large_batch.models.text_classifiers import default_model_path

    tok = load_bert_tokenizer(default_model_path())
    split = text_tasks.TextSplit(
        [["Héllo there", "a"], ["general kenobi", "b c"]], np.array([0, 1])
    )
    out = text_pipeline.tokenize(split, tok, 12)
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


# ---- GLUE files as published (tests/fixtures/glue/) ------------------------------------
FIXTURES = Path(__file__).parents[1] / "fixtures" / "glue"


def test_mrpc_with_byte_order_mark_and_unquoted_quotes():
    assert (FIXTURES / "MRPC" / "dev.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    task = text_tasks.load_task("mrpc", "auto", str(FIXTURES))
    assert task.train.labels.tolist() == [1, 0, 1] and task.validation.labels.tolist() == [1, 0]
    # QUOTE_NONE: a field starting with `"` and the `'` of tokenised English are kept verbatim.
    assert (
        task.train.texts[0][1] == '" We \'re not going to back down , " the mayor said on Tuesday .'
    )
    assert task.validation.texts[1][1] == "It wasn 't clear whether the ruling would stand ."
    assert task.skipped_rows == {} and task.extra_validation == {}
    assert list(task.validation_splits) == ["validation"]


def test_qqp_short_rows_and_unparseable_labels_are_skipped_and_counted():
    with pytest.warns(UserWarning) as caught:
        task = text_tasks.load_task("qqp", "tsv", str(FIXTURES))
    (warning,) = [str(w.message) for w in caught]  # one line for the one bad file
    assert "\n" not in warning
    assert warning.startswith(
        str(FIXTURES / "QQP" / "train.tsv") + ": skipped 3 malformed row(s) of 5"
    )
    assert "2 with fewer than 6 columns" in warning and "1 with labels ['']" in warning
    assert "first at line 3" in warning
    assert task.train.skipped_rows == 3 and task.validation.skipped_rows == 0
    assert task.skipped_rows == {"train": 3}
    assert task.train.texts[0] == [
        'How do I learn "machine learning" on my own?',
        "How can I improve my English?",
    ]
    assert task.train.labels.tolist() == [1, 0]
    assert task.validation.texts[0][1] == '"Hello world" in Rust: how?'
    assert task.train.take(1).skipped_rows == 3


def test_mnli_matched_and_mismatched_validation_from_tsv():
    task = text_tasks.load_task("mnli", "tsv", str(FIXTURES / "MNLI"))  # the task folder itself
    assert task.train.labels.tolist() == [1, 0, 2]  # neutral, entailment, contradiction
    assert task.train.texts[0][1] == 'yeah i told him "don\'t wait up" and left'
    assert task.validation_name == "validation_matched"
    assert list(task.validation_splits) == ["validation_matched", "validation_mismatched"]
    matched, mismatched = task.validation, task.extra_validation["validation_mismatched"]
    assert matched.texts[0] == ["The new rights are nice enough.", "The museum is open every day."]
    assert matched.labels.tolist() == [1, 2]
    assert mismatched.texts[0][1] == 'I said, "we\'ll see."'
    assert mismatched.labels.tolist() == [1, 2, 0]  # gold_label, not label1
    assert task.skipped_rows == {}


def test_mnli_mismatched_validation_through_tensorflow_datasets_mock():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    sizes = {"train": 4, "validation_matched": 3, "validation_mismatched": 2}
    asked = []

    def as_dataset(builder, split, **kwargs):
        asked.append(str(split))
        n = sizes[str(split)]
        return tf.data.Dataset.from_tensor_slices(
            {
                "premise": [f"{split} premise {i}" for i in range(n)],
                "hypothesis": [f"hypothesis {i}" for i in range(n)],
                "label": tf.constant([i % 3 for i in range(n)], tf.int64),
                "idx": tf.range(n, dtype=tf.int32),
            }
        )

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        task = text_tasks.load_task("mnli", "tfds")
    assert sorted(asked) == sorted(sizes)
    assert task.validation_name == "validation_matched"
    splits = task.validation_splits
    assert {k: len(v) for k, v in splits.items()} == {
        "validation_matched": 3,
        "validation_mismatched": 2,
    }
    assert splits["validation_mismatched"].texts[0][1] == "validation_mismatched premise 1"
    assert splits["validation_mismatched"].labels.tolist() == [0, 1]
    with tfds.testing.mock_data(num_examples=3):
        assert text_tasks.load_task("rte", "tfds").extra_validation == {}


def test_stsb_scores_with_ties_and_their_spearman():
    task = text_tasks.load_task("stsb", "tsv", str(FIXTURES))
    assert task.regression and task.validation.labels.dtype == np.float32
    y = task.validation.labels
    assert y.tolist() == pytest.approx([5.0, 3.8, 3.8, 0.0, 3.8, 1.2])
    assert task.validation.texts[1][2] == 'Obama signs the "fiscal cliff" bill.'
    assert task.train.skipped_rows == 0
    p = np.array([4.5, 3.0, 4.0, 0.5, 3.0, 3.0])
    # Average ranks: y -> [6, 4, 4, 1, 4, 2], p -> [6, 3, 5, 1, 3, 3]; Pearson of them = 13.5 / 15.5
    # (the no-ties shortcut 1 - 6 sum d^2 / (n (n^2 - 1)) would give 1 - 24 / 210).
    assert glue_metrics.spearman(y, p) == pytest.approx(27 / 31)
    assert glue_metrics.spearman(y, p[:, None]) == pytest.approx(27 / 31)  # (N, 1) outputs
    metrics = glue_metrics.task_metrics(task.metrics, y, p[:, None])
    assert metrics["spearman"] == pytest.approx(27 / 31)
    assert np.isnan(glue_metrics.spearman(y, np.array([1.0, np.nan, 2, 3, 4, 5])))


def test_cola_without_header():
    task = text_tasks.load_task("cola", "tsv", str(FIXTURES))
    assert task.train.texts == [
        [
            'The children said "goodbye" to their teacher.',
            "The child's were all asleep.",
            "Which book did you say that Mary's brother read?",
            "Who did you wonder whether would leave?",
        ]
    ]
    assert task.train.labels.tolist() == [1, 0, 1, 0]
    assert task.validation.texts == [['"Go home," she said.', "She seems sleeping."]]
    assert task.train.skipped_rows == 0 and task.metrics == ("matthews",)


def test_unusable_glue_files_are_clear_errors(tmp_path):
    header = ["index", "sentence1", "sentence2", "label"]
    _write_tsv(
        tmp_path / "RTE" / "train.tsv", header, [["0", "a", "b", "yes"], ["1", "c", "d", "no"]]
    )
    _write_tsv(tmp_path / "RTE" / "dev.tsv", header, [["0", "a", "b", "entailment"]])
    with pytest.raises(
        ConfigError,
        match=r"RTE/train\.tsv: none of its 2 rows is usable \(2 with labels \['no', 'yes'\] "
        r"that are not one of \['entailment', 'not_entailment'\] or an integer class index",
    ):
        text_tasks.load_task("rte", "tsv", str(tmp_path))
    (tmp_path / "RTE" / "train.tsv").write_text("")
    with pytest.raises(ConfigError, match=r"train\.tsv is empty: expected a header row"):
        text_tasks.load_task("rte", "tsv", str(tmp_path))
    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    for name in ("train.tsv", "dev_matched.tsv"):
        (mnli / name).write_bytes((FIXTURES / "MNLI" / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="dev_mismatched.tsv not found"):
        text_tasks.load_task("mnli", "tsv", str(tmp_path))


# ---- tokenizer settings of a Hugging Face folder ---------------------------------------
def _vocab_folder(path, config=None):
    path.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Héllo", "héllo", "Hello", "hello"]
    words += ["Café", "café", "Cafe", "cafe"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "config, expected",
    [
        (None, ["hello", "cafe"]),  # no tokenizer_config.json: uncased
        ({"do_lower_case": True, "strip_accents": None}, ["hello", "cafe"]),
        ({"do_lower_case": False}, ["Héllo", "Café"]),  # cased: case and accents kept
        ({"do_lower_case": False, "strip_accents": None}, ["Héllo", "Café"]),
        ({"do_lower_case": True, "strip_accents": False}, ["héllo", "café"]),
        ({"do_lower_case": False, "strip_accents": True}, ["Hello", "Cafe"]),
    ],
)
def test_bert_tokenizer_follows_tokenizer_config(tmp_path, config, expected):
    from adv_large_batch.models.perturbable_bert import load_bert_tokenizer

    tok = load_bert_tokenizer(_vocab_folder(tmp_path / "model", config))
    ids = np.asarray(tok(["Héllo Café"]))[0]
    assert [tok.id_to_token(int(i)) for i in ids] == expected


def test_bert_tokenizer_config_with_bad_values_is_a_clear_error(tmp_path):
    from adv_large_batch.models.perturbable_bert import load_bert_tokenizer

    with pytest.raises(ConfigError, match=r"do_lower_case 'yes'; allowed: true or false"):
        load_bert_tokenizer(_vocab_folder(tmp_path / "a", {"do_lower_case": "yes"}))
    with pytest.raises(ConfigError, match=r"strip_accents 1; allowed: true, false or null"):
        load_bert_tokenizer(_vocab_folder(tmp_path / "b", {"strip_accents": 1}))
    folder = _vocab_folder(tmp_path / "c")
    Path(folder, "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="tokenizer_config.json is not readable JSON"):
        load_bert_tokenizer(folder)


def test_finetune_reports_mnli_matched_and_mismatched(tmp_path):
    """MNLI-m is ``validation``; MNLI-mm is evaluated too: per epoch in the logs
    (``val_mismatched_accuracy``, also in TensorBoard) and at the end in the metrics."""
    import json

    from adv_large_batch import cli

    out = tmp_path / "m.json"
    args = [
        "finetune", "--task", "mnli", "--data-source", "tsv",
        "--data-dir", str(FIXTURES), "--model", "tiny-random", "--batch-size", "2",
        "--epochs", "1", "--max-seq-length", "16", "--method", "baseline", "--verbose", "0",
        "--metrics-out", str(out),
    ]  # fmt: skip
    assert cli.main(args) == 0
    result = json.loads(out.read_text())
    mismatched = result["validation_extra"]["validation_mismatched"]["accuracy"]
    assert 0.0 <= mismatched <= 1.0
    assert result["history"]["val_mismatched_accuracy"] == [mismatched]
    assert "accuracy" in result["validation"]
