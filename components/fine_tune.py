"""fine_tune: train the head on top of the backbone with the first `freeze_ratio` of its layers frozen.

The head is warm-started from `train_head`; BatchNormalization stays in inference mode (the backbone is
called with training=False, the keras.io rule); augmentation applies to the training split only. The best
epoch by the validation metric is kept, training stops early, and a killed run resumes from its last
epoch when rerun. Hyperparameters come from tuning's best-params file (or fine_tune params when tuning is off).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import keras
import numpy as np

from tlpipe.cli import atomic_dir, parser, run_main, step_params
from tlpipe.config import AugmentConfig, FineTuneConfig
from tlpipe.contracts import HEAD_FILE, METRICS_FILE, MODEL_FILE, BestParams, HyperParams, TrainedModel, write_json
from tlpipe.data.augmentation import build_augmenter
from tlpipe.data.datasets import batches, load_split
from tlpipe.models.backbones import (
    FreezePlan,
    apply_freeze,
    backbone_identity,
    build_classifier,
    freeze_plan,
    load_backbone,
    preprocess_mode,
)
from tlpipe.models.training import compile_for, make_head, set_determinism
from tlpipe.reports.plots import plot_history
from tlpipe.tracking.lineage import content_hash

PARAMS = ("fine_tune", "model.weights", "model.image_size", "model.head_units", "model.dropout", "augment", "seed",
          "deterministic", "storage.endpoint_url")


def hyperparams(best: BestParams, cfg: FineTuneConfig, dropout: float, head_units: int) -> HyperParams:
    """Tuning's best params, or fine_tune's own when tuning was off."""
    if best.params is not None:
        return best.params
    return HyperParams(freeze_ratio=cfg.freeze_ratio, learning_rate=cfg.learning_rate, dropout=dropout,
                       head_units=head_units)


def build_model(backbone: keras.Model, preprocess: str, size: int, hp: HyperParams, classes: int,
                head_path: Path | None) -> tuple[keras.Model, FreezePlan]:
    """Backbone (frozen per hp) + warm-started head, compiled with hp's learning rate."""
    plan = freeze_plan(backbone, hp.freeze_ratio)
    apply_freeze(backbone, plan)
    head = make_head(head_path, backbone.output.shape[-1], classes, hp)
    return compile_for(build_classifier(backbone, head, size, preprocess), hp.learning_rate), plan


class _BestSoFar(keras.callbacks.Callback):
    """Remembers the best monitored value on disk so a resumed run keeps comparing against it."""

    def __init__(self, path: Path, monitor: str):
        super().__init__()
        self.path, self.monitor = path, monitor

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {})[self.monitor])
        state = json.loads(self.path.read_text()) if self.path.exists() else {}
        better = max if self.monitor.endswith("accuracy") else min
        best = value if "best" not in state else better(state["best"], value)
        self.path.write_text(json.dumps({"best": best, "epoch": epoch}))


def fingerprint(parts: dict, subset: Path, head_path: Path | None) -> str:
    """Identifies one fine-tuning job so a checkpoint is resumed only by the same job."""
    blob = json.dumps(parts, sort_keys=True, default=str) + "|" + content_hash(subset / "manifest.csv") + "|" + (
        content_hash(head_path) if head_path else "")
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fine_tune(cfg: FineTuneConfig, augment: AugmentConfig, hp: HyperParams, seed: int, deterministic: bool,
              size: int, load, preprocess: str, identity: str, subset: Path, head_path: Path | None, workdir: Path,
              callbacks=()) -> tuple[keras.Model, dict]:
    """Train and return the best model with its history; resumes from `workdir` if a previous run died."""
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    set_determinism(seed, deterministic)
    x_train, y_train, classes = load_split(subset, "train", size)
    x_val, y_val, _ = load_split(subset, "val", size)
    parts = {"fine_tune": cfg.model_dump(), "augment": augment.model_dump(), "hp": hp.model_dump(), "seed": seed,
             "size": size, "backbone": identity}
    job = workdir / fingerprint(parts, subset, head_path)
    job.mkdir(parents=True, exist_ok=True)
    with _strategy().scope():
        model, plan = build_model(load(), preprocess, size, hp, len(classes), head_path)
    state = job / "best.json"
    initial = json.loads(state.read_text())["best"] if state.exists() else None
    best_file = job / "best.keras"
    resumed = (job / "backup" / "training_metadata.json").exists()
    if resumed:
        print(f"fine_tune: resuming from the checkpoint in {job}")
    steps = [
        keras.callbacks.BackupAndRestore(str(job / "backup")),
        keras.callbacks.ModelCheckpoint(str(best_file), monitor=cfg.monitor, save_best_only=True,
                                        initial_value_threshold=initial),
        _BestSoFar(state, cfg.monitor),
        keras.callbacks.EarlyStopping(cfg.monitor, patience=cfg.patience),
        keras.callbacks.CSVLogger(str(job / "history.csv"), append=True),
        *callbacks,
    ]
    augmenter = build_augmenter(augment, seed)
    model.fit(batches(x_train, y_train, cfg.batch_size, augmenter=augmenter, shuffle_seed=seed),
              validation_data=batches(x_val, y_val, cfg.batch_size), epochs=cfg.epochs, verbose=2,
              callbacks=steps)
    best = keras.saving.load_model(best_file, safe_mode=True) if best_file.exists() else model
    history = _read_history(job / "history.csv")
    info = {"classes": classes, "freeze": {**plan.__dict__, "effective_ratio": plan.effective_ratio},
            "resumed": resumed, "history": history, "job_dir": str(job), "sample": x_val[:2]}
    return best, info


def _strategy():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def _read_history(path: Path) -> dict[str, list[float]]:
    import pandas as pd

    if not path.exists():
        return {}
    frame = pd.read_csv(path).drop_duplicates("epoch", keep="last").sort_values("epoch")
    return {c: [float(v) for v in frame[c]] for c in frame.columns if c != "epoch"}


def _log_model(model: keras.Model, sample: np.ndarray) -> str:
    """Log the model with its signature (inferred from two validation images); returns its models:/ URI."""
    import mlflow
    from mlflow.models import infer_signature

    example = sample[:2].astype("float32")
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    info = mlflow.keras.log_model(model, name="model", signature=signature,
                                  pip_requirements=["tensorflow-cpu==2.21.0", "keras==3.15.1"])
    return info.model_uri


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.fine_tune --subset ... --head ... --backbone ... --tuning ... --model ...`."""
    p = parser("fine_tune", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--validation", required=True, help="validate_data's result, tagged on the MLflow run")
    p.add_argument("--head", required=True, help="train_head's folder (warm start)")
    p.add_argument("--backbone", required=True, help="pretrain_backbone's folder, a .keras file/URI or an "
                                                     "application name")
    p.add_argument("--tuning", required=True, help="tune's folder (best_params.json)")
    p.add_argument("--model", required=True, help="folder for model.keras and run.json")
    p.add_argument("--report", required=True, help="folder for metrics.json, history.json and curves")
    p.add_argument("--workdir", default="checkpoints/fine_tune", help="resumable checkpoints (kept on failure)")
    args = p.parse_args(argv)
    params = step_params(args, "fine_tune", PARAMS)
    model_cfg = params.model
    hp = hyperparams(BestParams.read(args.tuning), params.fine_tune, model_cfg.dropout, model_cfg.head_units)
    from tlpipe.tracking.runs import EpochLogger, step_run

    size, weights = model_cfg.image_size, model_cfg.weights
    with step_run(params, "fine_tune", {"subset": args.subset, "head": args.head}, args.validation) as run:
        import mlflow

        model, info = fine_tune(
            params.fine_tune, params.augment, hp, params.seed, params.deterministic, size,
            lambda: load_backbone(args.backbone, weights, size, params.storage.endpoint_url),
            preprocess_mode(args.backbone), backbone_identity(args.backbone, weights, size), Path(args.subset),
            Path(args.head) / HEAD_FILE, Path(args.workdir), callbacks=[EpochLogger()])
        mlflow.log_params({f"effective.{k}": v for k, v in hp.model_dump().items()})
        mlflow.log_params({"effective.frozen_layers": info["freeze"]["frozen"],
                           "effective.freeze_boundary": info["freeze"]["boundary"]})
        history = info.pop("history")
        monitor = params.fine_tune.monitor
        pick = max if monitor.endswith("accuracy") else min
        best_epoch = history[monitor].index(pick(history[monitor])) if history else 0
        metrics = {"best_epoch": best_epoch + 1, "epochs_run": len(history.get("loss", [])),
                   **{f"best_{k}": v[best_epoch] for k, v in history.items()}}
        with atomic_dir(args.report) as report:
            write_json(report / METRICS_FILE, metrics)
            write_json(report / "history.json", {"epoch": list(range(1, len(history.get("loss", [])) + 1)),
                                                 **history})
            plot_history(history, report / "history.png", f"fine_tune (freeze {info['freeze']['boundary']})")
        mlflow.log_artifact(str(Path(args.report) / "history.png"))
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        model_uri = _log_model(model, info.pop("sample"))
        with atomic_dir(args.model) as staged:
            model.save(staged / MODEL_FILE)
            TrainedModel(run_id=run.info.run_id, model_uri=model_uri, classes=info["classes"], freeze=info["freeze"],
                         hyperparameters=hp, resumed=info["resumed"], best_epoch=best_epoch + 1,
                         backbone=backbone_identity(args.backbone, weights, size)).write(staged)
    shutil.rmtree(info["job_dir"], ignore_errors=True)
    print(f"fine_tune: best {monitor} {metrics.get('best_' + monitor, float('nan')):.3f} at epoch "
          f"{metrics['best_epoch']} with {info['freeze']['frozen']}/{info['freeze']['total']} backbone layers "
          f"frozen -> {args.model}")


if __name__ == "__main__":
    run_main(main)
