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
    """Average ranks (ties share the mean rank), as Spearman's rho needs."""
    x = np.asarray(x, np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tie = x == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
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
