"""evaluate: the fine-tuned model and the frozen-features reference on the same test split.

Writes `metrics.json` (what `dvc metrics show` displays and MLflow logs), per-class precision/recall/F1,
a confusion matrix (PNG and a CSV for `dvc plots`), and a grid of test images with truth and prediction.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from components.cli import atomic_dir, params_from, parser, run_main
from components.common import pyplot, read_json, write_json


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Confusion matrix: rows are the truth, columns the prediction."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def scores(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, log loss, per-class precision/recall/F1/support and the confusion matrix."""
    y_pred = probs.argmax(axis=1)
    matrix = confusion(y_true, y_pred, len(classes))
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    picked = np.clip(probs[np.arange(len(y_true)), y_true], 1e-7, 1.0)
    return {
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "loss": float(-np.log(picked).mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(actual[i])} for i, c in enumerate(classes)},
        "confusion": matrix.tolist(),
    }


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Confusion matrix heat map with counts."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_samples(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path,
                 count: int, title: str = "GT / PR on test images") -> None:
    """A grid of images titled 'GT: x / PR: y' (red when wrong), as in the seeds."""
    plt = pyplot()
    count = min(count, len(images))
    cols = min(8, max(count, 1))
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, truth, guess in zip(axes.flat, images[:count], y_true[:count], y_pred[:count], strict=False):
        ax.imshow(image.astype(np.uint8))
        ax.set_title(f"GT: {classes[truth]} / PR: {classes[guess]}", fontsize=7,
                     color="black" if truth == guess else "red")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.evaluate --subset ... --model-dir ... --head ... --features ... --out ...`."""
    import keras

    from components.datasets import load_split
    from components.tracking import step_run
    from components.train_head import load_features

    p = parser("evaluate", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset (test split)")
    p.add_argument("--model-dir", required=True, help="fine_tune's output folder")
    p.add_argument("--head", required=True, help="train_head's .keras (frozen-features reference)")
    p.add_argument("--features", required=True, help="extract_features' folder (test features)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--validation", help="validate_data result, tagged on the MLflow run")
    args = p.parse_args(argv)
    params = params_from(args)
    model_dir = Path(args.model_dir)
    run_info = read_json(model_dir / "run.json")
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    images, labels, classes = load_split(Path(args.subset), "test", params.model.image_size)
    probs = np.asarray(model.predict(images.astype("float32"), verbose=0))
    fine = scores(labels, probs, classes)
    head = keras.saving.load_model(args.head, safe_mode=True)
    x_test, y_test = load_features(Path(args.features), "test")
    frozen = scores(y_test, np.asarray(head.predict(x_test, verbose=0)), classes)
    metrics = {"accuracy": fine["accuracy"], "loss": fine["loss"], "macro_f1": fine["macro_f1"],
               "frozen_features": {k: frozen[k] for k in ("accuracy", "loss", "macro_f1")},
               "fine_tune_gain": fine["accuracy"] - frozen["accuracy"], "test_images": int(len(labels))}
    inputs = {"subset": args.subset, "model": str(model_dir / "model.keras")}
    with step_run(params, "evaluate", inputs, args.validation), atomic_dir(args.out) as staged:
        import mlflow

        write_json(staged / "metrics.json", metrics)
        write_json(staged / "per_class.json", {"fine_tune": fine["per_class"], "frozen_features": frozen["per_class"],
                                               "confusion": fine["confusion"], "classes": classes})
        y_pred = probs.argmax(axis=1)
        write_confusion_csv(labels, y_pred, classes, staged / "confusion.csv")
        plot_confusion(np.array(fine["confusion"]), classes, staged / "confusion.png", "fine_tune, test split")
        pick = spread(labels, params.evaluate.grid_samples, params.seed)
        plot_samples(images[pick], labels[pick], y_pred[pick], classes, staged / "samples.png",
                     params.evaluate.grid_samples)
        mlflow.set_tag("evaluated_run_id", run_info["run_id"])
        mlflow.log_metrics({"test_accuracy": fine["accuracy"], "test_loss": fine["loss"],
                            "test_macro_f1": fine["macro_f1"], "frozen_test_accuracy": frozen["accuracy"],
                            "fine_tune_gain": metrics["fine_tune_gain"]})
        for name in ("metrics.json", "per_class.json", "confusion.png", "samples.png"):
            mlflow.log_artifact(str(staged / name))
        mlflow.MlflowClient().log_metric(run_info["run_id"], "test_accuracy", fine["accuracy"])
    print(f"evaluate: test accuracy {fine['accuracy']:.3f} fine-tuned vs {frozen['accuracy']:.3f} frozen features "
          f"({len(labels)} images) -> {args.out}")


if __name__ == "__main__":
    run_main(main)
