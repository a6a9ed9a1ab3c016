"""What every training step shares: seeding, the classifier head and its warm start, compiling."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import keras

from tlpipe.contracts import HyperParams
from tlpipe.models.backbones import build_head


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed everything; with `deterministic` also make TF ops repeatable (CPU)."""
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
        tf.config.experimental.enable_op_determinism()


def make_head(head_path: Path | None, features: int, classes: int, hp: HyperParams) -> keras.Model:
    """A head with the tuned width/dropout, warm-started from train_head's weights when the shapes fit."""
    head = build_head(features, classes, hp.head_units, hp.dropout)
    if head_path is not None:
        trained = keras.saving.load_model(head_path, compile=False, safe_mode=True)
        if [w.shape for w in trained.get_weights()] == [w.shape for w in head.get_weights()]:
            head.set_weights(trained.get_weights())
        else:
            print(f"head width {hp.head_units} differs from train_head's; the head starts fresh")
    return head


def compile_for(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam at `learning_rate`, sparse labels, accuracy; its training state built now (`prebuild`)."""
    model.compile(keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    prebuild(model)
    return model


def prebuild(model: keras.Model) -> None:
    """Create a compiled model's optimizer, loss and metric variables before its first `fit`.

    Without a distribution strategy Keras 3 defers them to the first trace of the train step, and a tf.function
    that creates variables is traced twice; built here, every fit traces its train step once (the default
    10-trial tune step: 35.1 s -> 27.3 s; tests/library/test_training.py counts the traces). Keras has no public
    call for this: `Trainer._symbolic_build` is what `fit` itself runs under a distribution strategy, fed
    symbolic tensors of the input's shape and of integer labels. Skipped where a Keras release lacks it.
    """
    build = getattr(model, "_symbolic_build", None)
    if build is None or len(model.inputs) != 1:
        return
    x = keras.KerasTensor((None, *model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype)
    build(data_batch=(x, keras.KerasTensor((None,), dtype="int32")))


def save_model(model: keras.Model, path: str | Path) -> Path:
    """`model.save(path)`, byte-identical for identical weights and architecture.

    Keras writes the save date into metadata.json, Python object ids (`shared_object_id`) into config.json
    and the current time into the weights entry's zip header, so identical models give different files, and
    DVC's cache and content fingerprints never match across fresh runs. The weights file itself is
    repeatable; this rewrites the container without the three (ids renumbered in order of appearance, which
    keeps shared objects shared when the model loads).
    """
    path = Path(path)
    raw = path.with_name(f".{path.stem}-raw.keras")
    model.save(raw)
    try:
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "metadata.json":
                    meta = json.loads(data)
                    meta.pop("date_saved", None)
                    data = json.dumps(meta).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_renumbered(json.loads(data), {})).encode()
                entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                entry.compress_type, entry.external_attr = info.compress_type, 0o644 << 16
                dst.writestr(entry, data)
    finally:
        raw.unlink(missing_ok=True)
    return path


def _renumbered(node, ids: dict):
    if isinstance(node, dict):
        return {
            k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else _renumbered(v, ids)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_renumbered(v, ids) for v in node]
    return node
