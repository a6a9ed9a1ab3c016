"""train_head: the classifier head (dense + dropout) trained on cached frozen features, in seconds.

This is the seeds' "feature extractor" scenario, the frozen-features baseline evaluate reports, and the
warm start for `fine_tune`'s head.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import HEAD_FILE, HISTORY_PNG, METRICS_FILE, FeaturesInfo, features_file, numbers, write_json
from tlpipe.fs import atomic_dir
from tlpipe.models.backbones import build_head
from tlpipe.models.training import compile_for, save_model, set_determinism
from tlpipe.reports.plots import plot_history
from tlpipe.sections import TrainHeadConfig

PARAMS = ("train_head", "model.head_units", "model.dropout", "seed", "deterministic")


def load_features(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of one split."""
    data = np.load(Path(folder) / features_file(split))
    return data["features"], data["labels"]


def train_head(
    cfg: TrainHeadConfig, units: int, dropout: float, seed: int, deterministic: bool, features: Path, callbacks=()
) -> tuple[keras.Model, dict]:
    """Fit the head on train features (best epoch by validation accuracy); return it and its metrics."""
    set_determinism(seed, deterministic)
    info = FeaturesInfo.read(features)
    x_train, y_train = load_features(features, "train")
    x_val, y_val = load_features(features, "val")
    head = compile_for(build_head(x_train.shape[1], len(info.classes), units, dropout), cfg.learning_rate)
    best = keras.callbacks.EarlyStopping("val_accuracy", patience=cfg.epochs, restore_best_weights=True)
    history = head.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        verbose=0,
        callbacks=[best, *callbacks],
    )
    val_loss, val_acc = head.evaluate(x_val, y_val, verbose=0)
    metrics = {
        "val_accuracy": float(val_acc),
        "val_loss": float(val_loss),
        "epochs": len(history.history["loss"]),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    return head, metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.train_head --features ... --validation ... --head models/head --report ...`."""
    p = parser("train_head", __doc__)
    p.add_argument("--features", required=True, help="folder written by extract_features")
    p.add_argument("--validation", required=True, help="validate_data's result, tagged on the MLflow run")
    p.add_argument("--head", required=True, help="folder for head.keras")
    p.add_argument("--report", required=True, help="folder for metrics.json and training curves")
    args = p.parse_args(argv)
    params = step_params(args, "train_head", PARAMS)
    from tlpipe.tracking.runs import epoch_callback, step_run

    with step_run(params, "train_head", {"features": args.features}, args.validation):
        import mlflow

        head, metrics = train_head(
            params.train_head,
            params.model.head_units,
            params.model.dropout,
            params.seed,
            params.deterministic,
            Path(args.features),
            callbacks=[epoch_callback()],
        )
        with atomic_dir(args.report) as report:
            write_json(report / METRICS_FILE, numbers(metrics))
            plot_history(metrics["history"], report / HISTORY_PNG, "train_head on frozen features")
        mlflow.log_metrics({"best_val_accuracy": metrics["val_accuracy"], "best_val_loss": metrics["val_loss"]})
        mlflow.log_artifact(str(Path(args.report) / HISTORY_PNG))
        with atomic_dir(args.head) as staged:
            save_model(head, staged / HEAD_FILE)
    print(f"train_head: val accuracy {metrics['val_accuracy']:.3f} on frozen features -> {args.head}")


if __name__ == "__main__":
    run_main(main)
