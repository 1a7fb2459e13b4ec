"""GLUE from the original TSV folders (``SST-2/train.tsv``, ``dev.tsv``, ...), as published:
a UTF-8 byte-order mark (MRPC), ``QUOTE_NONE``, malformed rows (QQP) and rows with a byte
that is not UTF-8 skipped and counted.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from adv_large_batch.data.text_splits import TASKS, TaskSpec, TextSplit, TextTask, TsvLayout
from adv_large_batch.flags import ConfigError


def _label_parser(spec: TaskSpec) -> tuple[Callable[[str], Any], str]:
    """(parse, allowed): ``parse(raw)`` gives the label, or None when ``raw`` is not one."""
    if spec.regression:

        def parse(raw: str) -> float | None:
            try:
                value = float(raw)
            except ValueError:
                return None
            return value if math.isfinite(value) else None

        return parse, "a finite similarity score"
    mapping = spec.tsv.label_names if spec.tsv else {}

    def parse_class(raw: str) -> int | None:
        if raw in mapping:
            return mapping[raw]
        try:  # class indices, as tensorflow-datasets also accepts them
            return int(raw)
        except ValueError:
            return None

    allowed = f"one of {sorted(mapping, key=mapping.get)} or " if mapping else ""
    return parse_class, allowed + "an integer class index"


def _is_utf8(row: list[str]) -> bool:
    """False if a field holds a byte that was not UTF-8 (a surrogate from surrogateescape)."""
    try:
        "\t".join(row).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_rows(path: str, layout: TsvLayout) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every row of one TSV file, as published (module docstring)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"GLUE file {path} not found (expected the {layout.folder}/ folder layout)"
        )
    # utf-8-sig drops MRPC's BOM; surrogateescape keeps a byte that is not UTF-8 as a lone
    # surrogate, so that its row is skipped and counted instead of ending the read.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(reader.line_num, row) for row in reader]


def _columns(
    path: str, rows: list[tuple[int, list[str]]], layout: TsvLayout
) -> tuple[int, list[int], int, list[tuple[int, list[str]]]]:
    """(row width, text column indices, label column index, the rows below the header)."""
    if not layout.header:
        return layout.columns, list(layout.text_columns), layout.label_column, rows
    wanted = [*layout.text_columns, layout.label_column]
    if not rows:
        raise ConfigError(
            f"{path} is empty: expected a header row with the columns "
            f"{wanted} (the {layout.folder}/ layout of GLUE)"
        )
    header, body = rows[0][1], rows[1:]
    index = {col: i for i, col in enumerate(header)}
    missing = [c for c in wanted if c not in index]
    if missing:
        raise ConfigError(f"{path}: columns {missing} not found in header {header}")
    return len(header), [index[c] for c in layout.text_columns], index[layout.label_column], body


@dataclasses.dataclass
class _Skipped:
    """The rows of one file left out, by reason, and the line of the first."""

    width: int
    allowed: str
    short: int = 0
    undecodable: int = 0
    bad_labels: list[str] = dataclasses.field(default_factory=list)
    first: int | None = None

    @property
    def count(self) -> int:
        return self.short + self.undecodable + len(self.bad_labels)

    def detail(self) -> str:
        what = []
        if self.short:
            what.append(f"{self.short} with fewer than {self.width} columns")
        if self.undecodable:
            what.append(f"{self.undecodable} with bytes that are not UTF-8")
        if self.bad_labels:
            shown = sorted(set(self.bad_labels))[:5]
            what.append(f"{len(self.bad_labels)} with labels {shown} that are not {self.allowed}")
        return f"{', '.join(what)}; first at line {self.first}"


def _read_tsv(path: str, name: str) -> TextSplit:
    """One GLUE TSV file as a split; malformed rows are skipped and counted (module docstring)."""
    spec = TASKS[name]
    width, text_index, label_index, body = _columns(path, _read_rows(path, spec.tsv), spec.tsv)
    parse, allowed = _label_parser(spec)
    cols: list[list[str]] = [[] for _ in text_index]
    labels = []
    skipped = _Skipped(width, allowed)
    for line, row in body:
        if not row:  # a blank line, as csv.DictReader skips them
            continue
        if not _is_utf8(row):
            skipped.undecodable += 1
            skipped.first = skipped.first or line
            continue
        label = parse(row[label_index]) if len(row) >= width else None
        if label is None:
            if len(row) < width:
                skipped.short += 1
            else:
                skipped.bad_labels.append(row[label_index])
            skipped.first = skipped.first or line
            continue
        for col, i in zip(cols, text_index):
            col.append(row[i])
        labels.append(label)
    if skipped.count and not labels:
        detail = skipped.detail()
        raise ConfigError(f"{path}: none of its {skipped.count} rows is usable ({detail})")
    if skipped.count:
        warnings.warn(
            f"{path}: skipped {skipped.count} malformed row(s) of {skipped.count + len(labels)} "
            f"({skipped.detail()})",
            stacklevel=3,
        )
    dtype = np.float32 if spec.regression else np.int32
    return TextSplit(cols, np.array(labels, dtype), skipped_rows=skipped.count)


def load_glue_tsv(name: str, data_dir: str) -> TextTask:
    """GLUE task ``name`` from ``data_dir``: the folder holding ``SST-2/``, ``MNLI/``, ...,
    or the task's folder itself."""
    spec = TASKS[name]
    folder = spec.tsv.folder
    root = (
        os.path.join(data_dir, folder)
        if os.path.isdir(os.path.join(data_dir, folder))
        else data_dir
    )
    return TextTask(
        name,
        spec.num_classes,
        spec.metrics,
        _read_tsv(os.path.join(root, "train.tsv"), name),
        _read_tsv(os.path.join(root, spec.tsv.dev_file), name),
        extra_validation={
            split: _read_tsv(os.path.join(root, file), name)
            for split, file in spec.extra_validation.items()
        },
        validation_name=spec.validation,
    )
