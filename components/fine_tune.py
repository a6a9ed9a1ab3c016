"""fine_tune: train the head on top of the backbone with the first `freeze_ratio` of its layers frozen.

The head is warm-started from `train_head`; BatchNormalization stays in inference mode (the backbone is
called with training=False, the keras.io rule); augmentation applies to the training split only. The best
epoch by the validation metric is kept, training stops early, and a killed run resumes from its last
epoch when rerun. Hyperparameters come from tuning's best-params file (or fine_tune params when tuning is off).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from components.augment import build_augmenter
from components.backbones import (
    FreezePlan,
    apply_freeze,
    build_classifier,
    build_head,
    freeze_plan,
    load_backbone,
    preprocess_mode,
)
from components.cli import atomic_dir, params_from, parser, run_main
from components.common import plot_history, read_json, set_determinism, write_json
from components.config import Params
from components.datasets import batches, load_split
from components.tracking import content_hash


@dataclass(frozen=True)
class HyperParams:
    """What tuning searches over and fine-tuning uses."""

    freeze_ratio: float
    learning_rate: float
    dropout: float
    head_units: int

    @classmethod
    def from_params(cls, params: Params) -> HyperParams:
        """The values written in params (fine_tune + model sections)."""
        return cls(params.fine_tune.freeze_ratio, params.fine_tune.learning_rate, params.model.dropout,
                   params.model.head_units)

    @classmethod
    def from_file(cls, path: Path, params: Params) -> HyperParams:
        """Tuning's best-params file; keys it does not set fall back to params."""
        best = read_json(path).get("params", {})
        base = asdict(cls.from_params(params))
        base.update({k: v for k, v in best.items() if k in base})
        return cls(**base)


def make_head(head_path: Path | None, features: int, classes: int, hp: HyperParams) -> keras.Model:
    """A head with the tuned width/dropout, warm-started from train_head's weights when the shapes fit."""
    head = build_head(features, classes, hp.head_units, hp.dropout)
    if head_path is not None:
        trained = keras.saving.load_model(head_path, compile=False, safe_mode=True)
        if [w.shape for w in trained.get_weights()] == [w.shape for w in head.get_weights()]:
            head.set_weights(trained.get_weights())
        else:
            print(f"fine_tune: head width {hp.head_units} differs from train_head's; head starts fresh")
    return head


def build_model(params: Params, hp: HyperParams, classes: int, head_path: Path | None,
                backbone: keras.Model | None = None) -> tuple[keras.Model, FreezePlan]:
    """Backbone (frozen per hp) + warm-started head, compiled with hp's learning rate."""
    backbone = backbone or load_backbone(params.model, params.storage.endpoint_url)
    plan = freeze_plan(backbone, hp.freeze_ratio)
    apply_freeze(backbone, plan)
    head = make_head(head_path, backbone.output.shape[-1], classes, hp)
    model = build_classifier(backbone, head, params.model.image_size, preprocess_mode(params.model))
    model.compile(keras.optimizers.Adam(hp.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, plan


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


def fingerprint(params: Params, hp: HyperParams, subset: Path, head_path: Path | None) -> str:
    """Identifies one fine-tuning job so a checkpoint is resumed only by the same job."""
    parts = [json.dumps(params.model_dump(exclude={"tune", "registry", "tracking"}), sort_keys=True, default=str),
             json.dumps(asdict(hp), sort_keys=True), content_hash(subset / "manifest.csv"),
             content_hash(head_path) if head_path else "", ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def fine_tune(params: Params, hp: HyperParams, subset: Path, head_path: Path | None, workdir: Path,
              callbacks=()) -> tuple[keras.Model, dict]:
    """Train and return the best model with its history; resumes from `workdir` if a previous run died."""
    cfg = params.fine_tune
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    set_determinism(params)
    x_train, y_train, classes = load_split(subset, "train", params.model.image_size)
    x_val, y_val, _ = load_split(subset, "val", params.model.image_size)
    job = workdir / fingerprint(params, hp, subset, head_path)
    job.mkdir(parents=True, exist_ok=True)
    strategy = _strategy()
    with strategy.scope():
        model, plan = build_model(params, hp, len(classes), head_path)
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
    augmenter = build_augmenter(params.augment, params.seed)
    model.fit(batches(x_train, y_train, cfg.batch_size, augmenter=augmenter, shuffle_seed=params.seed),
              validation_data=batches(x_val, y_val, cfg.batch_size), epochs=cfg.epochs, verbose=2,
              callbacks=steps)
    best = keras.saving.load_model(best_file, safe_mode=True) if best_file.exists() else model
    history = _read_history(job / "history.csv")
    info = {"classes": classes, "freeze": asdict(plan) | {"effective_ratio": plan.effective_ratio},
            "hyperparameters": asdict(hp), "resumed": resumed, "history": history, "job_dir": str(job)}
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
    """Log the model with signature and input example; returns its models:/ URI."""
    import mlflow
    import mlflow.keras.save as keras_flavor
    from mlflow.models import infer_signature

    # mlflow 3.17's keras flavor writes the input example before creating the model folder; make it first.
    original = keras_flavor._save_example
    if not getattr(original, "_tlpipe_patched", False):
        def save_example(mlflow_model, example, path, *args, **kwargs):
            os.makedirs(path, exist_ok=True)
            return original(mlflow_model, example, path, *args, **kwargs)

        save_example._tlpipe_patched = True
        keras_flavor._save_example = save_example

    example = sample[:2].astype("float32")
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    info = mlflow.keras.log_model(model, name="model", signature=signature, input_example=example,
                                  pip_requirements=["tensorflow-cpu==2.21.0", "keras==3.15.1"])
    return info.model_uri


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.fine_tune --subset ... --head ... --best-params ... --out ... --report-dir ...`."""
    p = parser("fine_tune", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--head", required=True, help="train_head's .keras (warm start)")
    p.add_argument("--best-params", help="tune's best_params.json (default: fine_tune params)")
    p.add_argument("--out", required=True, help="folder for model.keras and run.json")
    p.add_argument("--report-dir", required=True, help="metrics.json, history.json and training curves")
    p.add_argument("--workdir", default="checkpoints/fine_tune", help="resumable checkpoints (kept on failure)")
    p.add_argument("--validation", help="validate_data result, tagged on the MLflow run")
    args = p.parse_args(argv)
    params = params_from(args)
    hp = HyperParams.from_file(Path(args.best_params), params) if args.best_params else HyperParams.from_params(params)
    from components.tracking import EpochLogger, step_run

    inputs = {"subset": args.subset, "head": args.head}
    with step_run(params, "fine_tune", inputs, args.validation) as run:
        import mlflow

        model, info = fine_tune(params, hp, Path(args.subset), Path(args.head), Path(args.workdir),
                                callbacks=[EpochLogger()])
        mlflow.log_params({f"effective.{k}": v for k, v in asdict(hp).items()})
        mlflow.log_params({"effective.frozen_layers": info["freeze"]["frozen"],
                           "effective.freeze_boundary": info["freeze"]["boundary"]})
        report = Path(args.report_dir)
        history = info.pop("history")
        monitor = params.fine_tune.monitor
        pick = max if monitor.endswith("accuracy") else min
        best_epoch = history[monitor].index(pick(history[monitor])) if history else 0
        metrics = {"best_epoch": best_epoch + 1, "epochs_run": len(history.get("loss", [])),
                   **{f"best_{k}": v[best_epoch] for k, v in history.items()}}
        write_json(report / "metrics.json", metrics)
        write_json(report / "history.json", {"epoch": list(range(1, len(history.get("loss", [])) + 1)), **history})
        plot_history(history, report / "history.png", f"fine_tune (freeze {info['freeze']['boundary']})")
        mlflow.log_artifact(str(report / "history.png"))
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        x_val, _, _ = load_split(Path(args.subset), "val", params.model.image_size)
        model_uri = _log_model(model, x_val)
        with atomic_dir(args.out) as staged:
            model.save(staged / "model.keras")
            write_json(staged / "run.json", {"run_id": run.info.run_id, "model_uri": model_uri, **info})
    shutil.rmtree(info["job_dir"], ignore_errors=True)
    print(f"fine_tune: best {monitor} {metrics.get('best_' + monitor, float('nan')):.3f} at epoch "
          f"{metrics['best_epoch']} with {info['freeze']['frozen']}/{info['freeze']['total']} backbone layers "
          f"frozen -> {args.out}")


if __name__ == "__main__":
    run_main(main)
