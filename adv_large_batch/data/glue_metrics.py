"""GLUE's evaluation metrics in NumPy: accuracy, F1 (MRPC, QQP), Matthews
correlation (CoLA), Pearson and Spearman correlation (STS-B)."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class (label 1)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp = np.sum((predictions == 1) & (labels == 1))
    fp = np.sum((predictions == 1) & (labels == 0))
    fn = np.sum((predictions == 0) & (labels == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
    a, b = np.asarray(labels, np.float64), np.asarray(predictions, np.float64).reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as Spearman's rho needs; NaN stays NaN.

    Example: ``_ranks([10, 20, 20, 30])`` -> ``[1, 2.5, 2.5, 4]``.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    finite = ~np.isnan(x)
    _, inverse, counts = np.unique(x[finite], return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of the last member of each group of equal values
    ranks = np.full(len(x), np.nan)
    ranks[finite] = (last - (counts - 1) / 2.0)[inverse.reshape(-1)]
    return ranks


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Spearman's rho: Pearson of the average ranks; NaN when any value is NaN (diverged)."""
    return pearson(_ranks(labels), _ranks(predictions))


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def task_metrics(
    names: tuple[str, ...], labels: np.ndarray, outputs: np.ndarray
) -> dict[str, float]:
    """Metrics of a task from the model outputs (logits, or scores for regression)."""
    outputs = np.asarray(outputs)
    predictions = outputs.reshape(-1) if outputs.shape[-1] == 1 else outputs.argmax(-1)
    return {name: METRICS[name](labels, predictions) for name in names}
