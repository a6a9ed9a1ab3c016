"""Training a classifier to convergence, resumable so that a killed-and-resumed run equals an uninterrupted one.

Keras' BackupAndRestore resumes at the right epoch but restarts the data shuffle and augmentation streams and
forgets EarlyStopping's state, so a resumed run diverges. Here each epoch is one `fit` call whose randomness
(shuffle order, augmentation, dropout) is derived from (seed, epoch) alone, and after every epoch the model
with its optimizer state, the best value so far and the patience count are checkpointed together. A rerun
of the same job (same fingerprint) continues from the last finished epoch with identical state.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tlpipe.contracts import HyperParams
from tlpipe.data.augmentation import build_augmenter
from tlpipe.data.datasets import any_batches, passes_per_epoch
from tlpipe.fs import atomic_file
from tlpipe.models.backbones import FreezePlan, apply_freeze, build_classifier, regime_plan
from tlpipe.models.training import compile_for, make_head, set_determinism
from tlpipe.sections import AugmentConfig, FineTuneConfig


@dataclass(frozen=True, kw_only=True)
class Training:
    """What one training run is made of, apart from its data and its checkpoint folder (keyword-only)."""

    cfg: FineTuneConfig  # epochs, batch size, patience, monitor, mixed precision, input mode
    augment: AugmentConfig
    hp: HyperParams
    seed: int
    deterministic: bool
    size: int  # the image side
    load: Callable[[], Any]  # returns a fresh backbone (keras.Model)
    preprocess: str  # tlpipe.models.backbones.preprocess_mode of the backbone
    head_path: Path | None = None  # train_head's head.keras to warm-start from (transfer regime)
    callbacks: Sequence[Any] = ()
    devices: Sequence[str] | None = None  # for tf.distribute (None: the default device)

    @classmethod
    def from_params(
        cls,
        params: Any,
        cfg: FineTuneConfig,
        *,
        hp: HyperParams,
        load: Callable[[], Any],
        preprocess: str,
        head_path: Path | None = None,
        callbacks: Sequence[Any] = (),
    ) -> Training:
        """Built once from a step's params (`seed`, `deterministic`, `augment`, `model.image_size`)."""
        return cls(
            cfg=cfg,
            augment=params.augment,
            hp=hp,
            seed=params.seed,
            deterministic=params.deterministic,
            size=params.model.image_size,
            load=load,
            preprocess=preprocess,
            head_path=head_path,
            callbacks=tuple(callbacks),
        )


def build_model(
    backbone: keras.Model, preprocess: str, size: int, hp: HyperParams, classes: int, head_path: Path | None
) -> tuple[keras.Model, FreezePlan]:
    """Backbone for hp's regime (frozen per hp, or fresh for scratch) + head, compiled with hp's learning rate."""
    backbone, plan, train_bn = regime_plan(backbone, hp.regime, hp.freeze_ratio)
    apply_freeze(backbone, plan, train_bn or hp.train_bn)
    head = make_head(head_path if hp.regime != "scratch" else None, backbone.output.shape[-1], classes, hp)
    return compile_for(build_classifier(backbone, head, size, preprocess), hp.learning_rate), plan


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle, augmentation and dropout: a function of (seed, epoch) only."""
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def strategy(devices: list[str] | None = None):
    """MirroredStrategy over `devices`, else over the visible GPUs when there are several, else the default."""
    import tensorflow as tf

    if devices:
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def _reseed_layers(model: keras.Model, seed: int) -> None:
    """Set every layer's random stream (Dropout, ...) to a state that depends on (seed, epoch) only.

    A layer's SeedGenerator advances as it trains and is not part of the saved model, so without this a
    resumed run would draw different dropout masks than an uninterrupted one.
    """
    todo = list(model.layers)
    while todo:
        layer = todo.pop()
        todo.extend(getattr(layer, "layers", []))
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            generator.state.assign(np.array([seed, 0], dtype=generator.state.dtype))


class _State:
    """last.keras (weights + optimizer), best.keras and state.json of one job folder."""

    def __init__(self, folder: Path, monitor: str):
        self.folder, self.monitor = folder, monitor
        self.path = folder / "state.json"
        self.data = (
            json.loads(self.path.read_text())
            if self.path.is_file()
            else {"epoch": 0, "best": None, "wait": 0, "best_epoch": 0}
        )

    def better(self, value: float) -> bool:
        best = self.data["best"]
        return best is None or (value > best if self.monitor.endswith("accuracy") else value < best)

    def save(self, model: keras.Model, epoch: int, value: float, logs: dict) -> None:
        if self.better(value):
            model.save(self.folder / "best.keras")
            self.data.update(best=value, wait=0, best_epoch=epoch + 1)
        else:
            self.data["wait"] += 1
        with atomic_file(self.folder / "last.keras") as staged:
            model.save(staged)
        with open(self.folder / "history.csv", "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["epoch", *sorted(logs)], lineterminator="\n")
            if fh.tell() == 0:
                writer.writeheader()
            writer.writerow({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        self.data["epoch"] = epoch + 1
        self.path.write_text(json.dumps(self.data), encoding="utf-8")  # last: the epoch counts only when complete


def train(run: Training, data: tuple, job: Path) -> tuple[keras.Model, dict]:
    """Train to convergence (early stopping under `run.cfg.epochs`); returns the best model and what happened.

    `data` is (x_train, y_train, x_val, y_val, classes), images decoded in memory or file paths to stream
    (tlpipe/data/datasets.split_source). A `job` folder holding a checkpoint of the same job resumes from
    its last finished epoch.
    """
    cfg, seed, size = run.cfg, run.seed, run.size
    x_train, y_train, x_val, y_val, classes = data
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    set_determinism(seed, run.deterministic)
    job.mkdir(parents=True, exist_ok=True)
    # The checkpoint folder outlives the job folder (removed on success); a note keeps DVC from calling the
    # persisted output "empty" on every run.
    (job.parent / "README.txt").write_text("resumable checkpoints of unfinished training jobs live here\n")
    state = _State(job, cfg.monitor)
    with strategy(list(run.devices) if run.devices else None).scope():
        model, plan = build_model(run.load(), run.preprocess, size, run.hp, len(classes), run.head_path)
    resumed = state.data["epoch"] > 0 and (job / "last.keras").is_file()
    if resumed:
        print(f"resuming from epoch {state.data['epoch']} of the checkpoint in {job}")
        model.load_weights(job / "last.keras")
        saved = keras.saving.load_model(job / "last.keras", safe_mode=True)
        model.optimizer.build(model.trainable_variables)
        for mine, theirs in zip(model.optimizer.variables, saved.optimizer.variables, strict=True):
            mine.assign(theirs)
    val = any_batches(x_val, y_val, size, cfg.batch_size)
    passes = passes_per_epoch(len(y_train), cfg.batch_size, cfg.min_steps_per_epoch)
    if passes > 1 and state.data["epoch"] == 0:
        print(f"{len(y_train)} training images: an epoch is {passes} augmented passes (min_steps_per_epoch)")
    for epoch in range(state.data["epoch"], cfg.epochs):
        if state.data["wait"] >= cfg.patience:
            break
        keras.utils.set_random_seed(epoch_seed(seed, epoch))
        _reseed_layers(model, epoch_seed(seed, epoch))
        augmenter = build_augmenter(run.augment, epoch_seed(seed, epoch))
        train_ds = any_batches(
            x_train,
            y_train,
            size,
            cfg.batch_size,
            augmenter=augmenter,
            shuffle_seed=epoch_seed(seed, epoch),
            passes=passes,
        )
        history = model.fit(
            train_ds,
            validation_data=val,
            initial_epoch=epoch,
            epochs=epoch + 1,
            verbose=0,
            callbacks=list(run.callbacks),
        )
        logs = {k: v[-1] for k, v in history.history.items()}
        state.save(model, epoch, float(logs[cfg.monitor]), logs)
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: " + " ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())), flush=True
        )
    best = keras.saving.load_model(job / "best.keras", safe_mode=True) if (job / "best.keras").is_file() else model
    info = {
        "classes": classes,
        "freeze": {**plan.__dict__, "effective_ratio": plan.effective_ratio},
        "resumed": resumed,
        "history": read_history(job / "history.csv"),
        "job_dir": str(job),
        "best_epoch": state.data["best_epoch"],
    }
    return best, info


def read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch metrics from a job's history.csv (one row per finished epoch)."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keys = [k for k in rows[0] if k != "epoch"] if rows else []
    return {k: [float(r[k]) for r in rows] for k in keys}


def chance_level(accuracy: float, classes: int) -> bool:
    """Whether an accuracy is no better than guessing (within two test images' worth is not checked here)."""
    return accuracy <= 1.0 / max(classes, 1) + 1e-9 or bool(np.isclose(accuracy, 1.0 / max(classes, 1), atol=0.02))
