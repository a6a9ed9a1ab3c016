"""Scores on a test split (scikit-learn's metrics) with bootstrap confidence intervals (scipy)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def scores(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, log loss, macro F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "loss": float(log_loss(y_true, np.clip(probs, 1e-7, 1.0), labels=labels)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, statistic: str, seed: int, resamples: int = 2000
) -> list[float]:
    """95% bootstrap (BCa-free percentile) interval of accuracy or macro F1, resampling test images (scipy)."""
    from scipy.stats import bootstrap
    from sklearn.metrics import f1_score

    if len(y_true) < 2:
        value = float(np.mean(y_true == y_pred))
        return [value, value]

    def stat(t, p):
        return np.mean(t == p) if statistic == "accuracy" else f1_score(t, p, average="macro", zero_division=0)

    res = bootstrap(
        (y_true, y_pred),
        stat,
        paired=True,
        vectorized=False,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return [float(low), float(high)]


def spread(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of `count` test images spread over the classes (seeded)."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picks = [idx[i] for i in range(max(len(b) for b in by_class)) for idx in by_class if i < len(idx)]
    return np.array(picks[:count], dtype=int)


def write_confusion_csv(y_true, y_pred, classes: list[str], path: Path) -> None:
    """One row per test image (actual, predicted): the input of `dvc plots` confusion template."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[t], classes[p]) for t, p in zip(y_true, y_pred, strict=True))
