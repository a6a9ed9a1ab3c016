"""train_head: the classifier head (dense + dropout) trained on cached frozen features, in seconds.

This is the seeds' "feature extractor" scenario and the warm start for `fine_tune`'s head.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from components.backbones import build_head
from components.cli import atomic_file, params_from, parser, run_main
from components.common import plot_history, read_json, set_determinism, write_json
from components.config import Params


def load_features(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of one split."""
    data = np.load(folder / f"{split}.npz")
    return data["features"], data["labels"]


def train_head(params: Params, features: Path, callbacks=()) -> tuple[keras.Model, dict]:
    """Fit the head on train features (best epoch by validation accuracy); return it and its metrics."""
    cfg = params.train_head
    set_determinism(params)
    meta = read_json(features / "classes.json")
    x_train, y_train = load_features(features, "train")
    x_val, y_val = load_features(features, "val")
    head = build_head(x_train.shape[1], len(meta["classes"]), params.model.head_units, params.model.dropout)
    head.compile(keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    best = keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.epochs, restore_best_weights=True)
    history = head.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=cfg.epochs,
                       batch_size=cfg.batch_size, verbose=0, callbacks=[best, *callbacks])
    val_loss, val_acc = head.evaluate(x_val, y_val, verbose=0)
    metrics = {"val_accuracy": float(val_acc), "val_loss": float(val_loss), "epochs": len(history.history["loss"]),
               "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    return head, metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.train_head --features data/features --out models/head.keras --report-dir ...`."""
    p = parser("train_head", __doc__)
    p.add_argument("--features", required=True, help="folder written by extract_features")
    p.add_argument("--out", required=True, help="where the head .keras goes")
    p.add_argument("--report-dir", required=True, help="metrics.json and training curves")
    p.add_argument("--validation", help="validate_data result, tagged on the MLflow run")
    args = p.parse_args(argv)
    params = params_from(args)
    from components.tracking import EpochLogger, step_run

    with step_run(params, "train_head", {"features": args.features}, args.validation):
        import mlflow

        head, metrics = train_head(params, Path(args.features), callbacks=[EpochLogger()])
        report = Path(args.report_dir)
        write_json(report / "metrics.json", {k: v for k, v in metrics.items() if k != "history"})
        plot_history(metrics["history"], report / "history.png", "train_head on frozen features")
        mlflow.log_metrics({"best_val_accuracy": metrics["val_accuracy"], "best_val_loss": metrics["val_loss"]})
        mlflow.log_artifact(str(report / "history.png"))
        with atomic_file(args.out) as staged:
            head.save(staged)
    print(f"train_head: val accuracy {metrics['val_accuracy']:.3f} on frozen features -> {args.out}")


if __name__ == "__main__":
    run_main(main)
