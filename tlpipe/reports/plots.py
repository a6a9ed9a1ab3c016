"""The plots the steps write: training curves, confusion matrices, image grids (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlpipe.contracts import HISTORY_PNG


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: dict[str, list[float]], path: str | Path, title: str) -> None:
    """Loss and accuracy curves, train vs validation."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Confusion matrix heat map with counts (sklearn's display)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * len(classes), 1.2 + 0.5 * len(classes)))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=classes).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_samples(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: list[str],
    path: Path,
    count: int,
    title: str = "truth / prediction on test images",
) -> None:
    """A grid of images titled 'true x / pred y' (red when wrong), as in the seeds."""
    plt = pyplot()
    count = min(count, len(images))
    cols = min(8, max(count, 1))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, truth, guess in zip(axes.flat, images[:count], y_true[:count], y_pred[:count], strict=False):
        ax.imshow(image.astype(np.uint8))
        ax.set_title(
            f"true {classes[truth]}\npred {classes[guess]}", fontsize=8, color="black" if truth == guess else "red"
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def training_report(
    history: dict[str, list[float]], monitor: str, folder: Path, title: str, extra: dict | None = None
) -> dict:
    """metrics.json, history.json (rows, for `dvc plots`) and history.png in `folder`.

    metrics.json holds the best epoch and its values, plus `extra`; the return value is the best epoch's alone.
    """
    from tlpipe.contracts import HISTORY_FILE, METRICS_FILE, write_json

    pick = max if monitor.endswith("accuracy") else min
    values = history.get(monitor, [])
    best = values.index(pick(values)) if values else 0
    metrics = {
        "best_epoch": best + 1,
        "epochs_run": len(history.get("loss", [])),
        **{f"best_{k}": v[best] for k, v in history.items() if v},
    }
    write_json(folder / METRICS_FILE, {**metrics, **(extra or {})})
    epochs = len(history.get("loss", []))
    rows = [{"epoch": i + 1, **{k: v[i] for k, v in history.items() if len(v) == epochs}} for i in range(epochs)]
    write_json(folder / HISTORY_FILE, rows)  # row-wise: the shape `dvc plots` reads
    plot_history(history, folder / HISTORY_PNG, title)
    return metrics
