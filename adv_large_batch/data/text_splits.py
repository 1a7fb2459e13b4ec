"""What the text loaders share: the task table (``TaskSpec``, ``TASKS``, each GLUE task's
``TsvLayout``) and the split types (``TextSplit``, ``TextTask``).

``text_tasks`` (the sources and ``load_task``) and ``glue_tsv`` (the TSV reader) both
import from here and never from each other's types, so the imports run one way:
``text_tasks`` -> ``glue_tsv`` -> ``text_splits``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from adv_large_batch.flags import ConfigError


@dataclasses.dataclass(frozen=True)
class TsvLayout:
    """Where a GLUE task's original TSV files are and which columns hold what.

    ``text_columns`` / ``label_column`` are header names, or for a file without a
    header (``columns`` set: CoLA's) column positions.  ``label_names`` maps the
    string labels of the files to class indices, as tensorflow-datasets maps them.
    """

    folder: str
    text_columns: tuple[str, ...] | tuple[int, ...]
    label_column: str | int
    dev_file: str = "dev.tsv"
    label_names: Mapping[str, int] = dataclasses.field(default_factory=dict)
    columns: int | None = None  # headerless files: how many columns a row has

    @property
    def header(self) -> bool:
        return self.columns is None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One text task: its tensorflow-datasets text keys, classes (1: regression), metric
    names, TSV layout (None: not a GLUE TSV task), the name of its primary validation
    split and its other labelled validation splits (tfds split name -> TSV file)."""

    keys: tuple[str, ...]
    num_classes: int
    metrics: tuple[str, ...]
    tsv: TsvLayout | None = None
    validation: str = "validation"
    extra_validation: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def regression(self) -> bool:
        return self.num_classes == 1


_NLI = {"entailment": 0, "not_entailment": 1}

#: ``--task``: every text task, by name.
TASKS: dict[str, TaskSpec] = {
    "rotten_tomatoes": TaskSpec(("sentence",), 2, ("accuracy",)),
    "sst2": TaskSpec(("sentence",), 2, ("accuracy",), TsvLayout("SST-2", ("sentence",), "label")),
    "qnli": TaskSpec(
        ("question", "sentence"),
        2,
        ("accuracy",),
        TsvLayout("QNLI", ("question", "sentence"), "label", label_names=_NLI),
    ),
    "mnli": TaskSpec(
        ("premise", "hypothesis"),
        3,
        ("accuracy",),
        TsvLayout(
            "MNLI",
            ("sentence1", "sentence2"),
            "gold_label",
            dev_file="dev_matched.tsv",
            label_names={"entailment": 0, "neutral": 1, "contradiction": 2},
        ),
        validation="validation_matched",
        extra_validation={"validation_mismatched": "dev_mismatched.tsv"},
    ),
    "qqp": TaskSpec(
        ("question1", "question2"),
        2,
        ("accuracy", "f1"),
        TsvLayout("QQP", ("question1", "question2"), "is_duplicate"),
    ),
    "mrpc": TaskSpec(
        ("sentence1", "sentence2"),
        2,
        ("accuracy", "f1"),
        TsvLayout("MRPC", ("#1 String", "#2 String"), "Quality"),
    ),
    "rte": TaskSpec(
        ("sentence1", "sentence2"),
        2,
        ("accuracy",),
        TsvLayout("RTE", ("sentence1", "sentence2"), "label", label_names=_NLI),
    ),
    # CoLA's train/dev have no header: source, label, original label, sentence.
    "cola": TaskSpec(("sentence",), 2, ("matthews",), TsvLayout("CoLA", (3,), 1, columns=4)),
    "stsb": TaskSpec(
        ("sentence1", "sentence2"),
        1,
        ("pearson", "spearman"),
        TsvLayout("STS-B", ("sentence1", "sentence2"), "score"),
    ),
}


def task_spec(name: str) -> TaskSpec:
    """``TASKS[name]``, or a ``ConfigError`` naming the tasks."""
    if name not in TASKS:
        raise ConfigError(f"--task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


@dataclasses.dataclass
class TextSplit:
    """One split: a list of text columns (1 or 2) and labels (int, or float for STS-B).

    ``skipped_rows``: rows of the source file left out as malformed (TSV only; 0 otherwise).
    """

    texts: list[list[str]]
    labels: np.ndarray
    skipped_rows: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int | None) -> "TextSplit":
        if n is None or n >= len(self):
            return self
        return TextSplit([col[:n] for col in self.texts], self.labels[:n], self.skipped_rows)


@dataclasses.dataclass
class TextTask:
    """A task's splits.

    ``validation`` is the primary validation split (named ``validation_name``);
    ``extra_validation`` maps the names of further labelled validation splits to
    them (MNLI: ``{"validation_mismatched": ...}``; empty for the other tasks).
    """

    name: str
    num_classes: int
    metrics: tuple[str, ...]
    train: TextSplit
    validation: TextSplit
    test: TextSplit | None = None
    extra_validation: dict[str, TextSplit] = dataclasses.field(default_factory=dict)
    validation_name: str = "validation"

    @property
    def regression(self) -> bool:
        return self.num_classes == 1

    @property
    def validation_splits(self) -> dict[str, TextSplit]:
        """Every labelled validation split by name, the primary one first.

        Example: ``{"validation_matched": ..., "validation_mismatched": ...}`` for MNLI,
        ``{"validation": ...}`` for the other tasks.
        """
        return {self.validation_name: self.validation, **self.extra_validation}

    @property
    def skipped_rows(self) -> dict[str, int]:
        """Malformed source rows left out, per split name (only splits that lost some)."""
        splits = {"train": self.train, **self.validation_splits}
        if self.test is not None:
            splits["test"] = self.test
        return {k: v.skipped_rows for k, v in splits.items() if v.skipped_rows}
