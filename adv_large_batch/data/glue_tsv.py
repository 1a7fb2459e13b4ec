"""GLUE from the original TSV folders (``SST-2/train.tsv``, ``dev.tsv``, ...), as published:
a UTF-8 byte-order mark (MRPC), ``QUOTE_NONE``, malformed rows (QQP) and rows with a byte
that is not UTF-8 skipped and counted.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any

import numpy as np

from adv_large_batch.data.text_tasks import TASKS, TSV_LABELS, TextSplit, TextTask
from adv_large_batch.flags import ConfigError

# ---- GLUE from the original TSV files -------------------------------------------------
COLA_COLUMNS = 4  # CoLA train/dev have no header: source, label, original label, sentence


def _label_parser(name: str) -> tuple[Any, str]:
    """(parse, allowed): ``parse(raw)`` gives the label, or None when ``raw`` is not one."""
    if name == "stsb":

        def parse(raw: str) -> float | None:
            try:
                value = float(raw)
            except ValueError:
                return None
            return value if math.isfinite(value) else None

        return parse, "a finite similarity score"
    mapping = TSV_LABELS.get(name, {})

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


def _read_tsv(path: str, name: str) -> TextSplit:
    """One GLUE TSV file as a split; malformed rows are skipped and counted (module docstring)."""
    folder, _, text_cols, label_col = TASKS[name]["tsv"]
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"GLUE file {path} not found (expected the {folder}/ folder layout)"
        )
    # utf-8-sig drops MRPC's BOM; surrogateescape keeps a byte that is not UTF-8 as a lone
    # surrogate, so that its row is skipped and counted below instead of ending the read.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [(reader.line_num, row) for row in reader]
    if name == "cola":
        width, text_index, label_index, body = COLA_COLUMNS, [3], 1, rows
    else:
        if not rows:
            raise ConfigError(
                f"{path} is empty: expected a header row with the columns "
                f"{[*text_cols, label_col]} (the {folder}/ layout of GLUE)"
            )
        header, body = rows[0][1], rows[1:]
        index = {col: i for i, col in enumerate(header)}
        missing = [c for c in (*text_cols, label_col) if c not in index]
        if missing:
            raise ConfigError(f"{path}: columns {missing} not found in header {header}")
        width, label_index = len(header), index[label_col]
        text_index = [index[c] for c in text_cols]
    parse, allowed = _label_parser(name)
    cols: list[list[str]] = [[] for _ in text_index]
    labels = []
    short, undecodable, bad_labels, first_bad = 0, 0, [], None
    for line, row in body:
        if not row:  # a blank line, as csv.DictReader skips them
            continue
        if not _is_utf8(row):
            undecodable += 1
            first_bad = first_bad or line
            continue
        label = parse(row[label_index]) if len(row) >= width else None
        if label is None:
            if len(row) < width:
                short += 1
            else:
                bad_labels.append(row[label_index])
            first_bad = first_bad or line
            continue
        for col, i in zip(cols, text_index):
            col.append(row[i])
        labels.append(label)
    skipped = short + undecodable + len(bad_labels)
    if skipped:
        what = []
        if short:
            what.append(f"{short} with fewer than {width} columns")
        if undecodable:
            what.append(f"{undecodable} with bytes that are not UTF-8")
        if bad_labels:
            shown = sorted(set(bad_labels))[:5]
            what.append(f"{len(bad_labels)} with labels {shown} that are not {allowed}")
        detail = f"{', '.join(what)}; first at line {first_bad}"
        if not labels:
            raise ConfigError(f"{path}: none of its {skipped} rows is usable ({detail})")
        warnings.warn(
            f"{path}: skipped {skipped} malformed row(s) of {skipped + len(labels)} ({detail})",
            stacklevel=3,
        )
    dtype = np.float32 if name == "stsb" else np.int32
    return TextSplit(cols, np.array(labels, dtype), skipped_rows=skipped)


def load_glue_tsv(name: str, data_dir: str) -> TextTask:
    spec = TASKS[name]
    folder, dev_file = spec["tsv"][0], spec["tsv"][1]
    root = (
        os.path.join(data_dir, folder)
        if os.path.isdir(os.path.join(data_dir, folder))
        else data_dir
    )
    return TextTask(
        name,
        spec["num_classes"],
        spec["metrics"],
        _read_tsv(os.path.join(root, "train.tsv"), name),
        _read_tsv(os.path.join(root, dev_file), name),
        extra_validation={
            split: _read_tsv(os.path.join(root, file), name)
            for split, file in spec.get("extra_validation", {}).items()
        },
        validation_name=spec.get("validation", "validation"),
    )
