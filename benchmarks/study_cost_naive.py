"""The study_cost benchmark's naive arm: the study a skilled user writes with Keras and Optuna alone.

Split out of benchmarks/study_cost_arms.py (the shared helpers and the tlpipe arm) to keep each module short.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

from benchmarks.study_cost_arms import preimport, project_context, study_facts, write_params


def image_folders(subset: Path, out: Path) -> Path:
    """The subset's images as the naive user keeps them, <split>/<class>/<file> (written once, not timed)."""
    from tlpipe.contracts import SHARDS_DIR
    from tlpipe.data.records import records

    if not out.is_dir():
        staged = out.with_name(out.name + ".partial")
        shutil.rmtree(staged, ignore_errors=True)
        for rel, data in records(sorted((subset / SHARDS_DIR).glob("*.tfrecord"))):
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)
        staged.replace(out)
    return out


def naive_model(backbone, plan, head, size, preprocess, lr):
    import keras

    from tlpipe.models.backbones import apply_freeze, build_classifier

    apply_freeze(backbone, plan, False)
    model = build_classifier(backbone, head, size, preprocess)
    # plain compile, as a user writes it (tlpipe's compile_for also pre-builds the training state)
    model.compile(keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class DirectoryData:
    """tf_keras's DirectoryIterator as a Keras 3 PyDataset (Keras 3 does not take tf_keras Sequences)."""

    @staticmethod
    def make(folder: Path, size: int, batch: int, seed: int, augment=None, shuffle: bool = True):
        import keras
        from tf_keras.preprocessing.image import ImageDataGenerator

        gen = (
            ImageDataGenerator(
                rotation_range=augment.rotation_degrees,
                zoom_range=augment.zoom,
                width_shift_range=augment.width_shift,
                height_shift_range=augment.height_shift,
                horizontal_flip=augment.horizontal_flip,
                fill_mode="nearest",
            )
            if augment
            else ImageDataGenerator()
        )
        it = gen.flow_from_directory(
            str(folder),
            target_size=(size, size),
            color_mode="rgb",
            class_mode="sparse",
            batch_size=batch,
            shuffle=shuffle,
            seed=seed,
        )

        class Wrapped(keras.utils.PyDataset):
            def __len__(self):
                return len(it)

            def __getitem__(self, i):
                return it[i]

            def on_epoch_end(self):
                it.on_epoch_end()

        return Wrapped(), it.class_indices


def arm_naive(root: Path, seed: int, size: int, trials: int, out: Path, extra: dict) -> None:
    """Optuna + full model + ImageDataGenerator from the files every epoch, with early stopping and the pruner."""
    import keras
    import optuna
    from optuna_integration import KerasPruningCallback

    preimport()
    from tlpipe.config import load_params
    from tlpipe.contracts import HyperParams
    from tlpipe.data.datasets import class_names, read_manifest
    from tlpipe.models.backbones import freeze_plan
    from tlpipe.models.training import make_head
    from tlpipe.tuning.study import freeze_points, pruner, sampler, suggest

    params = load_params(write_params(root, seed, size, trials, storage=out.parent / "unused.db", overrides=extra))
    ctx = project_context(root, params)
    cfg, batch = params.tune, params.fine_tune.batch_size
    points = freeze_points(ctx.load_backbone())
    class_order = class_names(read_manifest(root / "data/subset"))
    folders = image_folders(root / "data/subset", root / "data/naive")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        hp = HyperParams(
            dropout=params.model.dropout,
            head_units=params.model.head_units,
            **suggest(trial, cfg, points, ["transfer"]),
        )
        keras.utils.set_random_seed(seed)
        backbone = ctx.load_backbone()
        plan = freeze_plan(backbone, hp.freeze_ratio)
        train, classes = DirectoryData.make(folders / "train", size, batch, seed, params.augment)
        val, _ = DirectoryData.make(folders / "val", size, 256, seed, shuffle=False)
        if sorted(classes, key=classes.get) != class_order:
            raise SystemExit(f"class order {classes} differs from the manifest's {class_order}")
        head = make_head(ctx.head, backbone.output.shape[-1], len(classes), hp)
        model = naive_model(backbone, plan, head, size, ctx.recipe.preprocess, hp.learning_rate)
        epochs_run = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: trial.set_user_attr("epochs_run", epoch + 1)
        )
        stop = keras.callbacks.EarlyStopping(cfg.metric, patience=cfg.patience)
        history = model.fit(
            train,
            validation_data=val,
            epochs=cfg.epochs,
            verbose=0,
            callbacks=[epochs_run, stop, KerasPruningCallback(trial, cfg.metric)],
        )
        return min(history.history[cfg.metric])

    started, t0 = dt.datetime.now(), time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=sampler(cfg, seed), pruner=pruner(cfg))
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - t0
    facts = study_facts(study, started)
    out.write_text(
        json.dumps(
            {
                "arm": "naive",
                "seed": seed,
                "size": size,
                "seconds": seconds,
                **facts,
                "early_stopping": True,
                "patience": cfg.patience,
                "pruner": cfg.pruner,
                "best_params": {
                    **facts["params"],
                    "regime": "transfer",
                    "train_bn": False,
                    "dropout": params.model.dropout,
                    "head_units": params.model.head_units,
                },
            },
            indent=1,
        )
    )
