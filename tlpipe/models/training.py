"""What every training step shares: seeding, the classifier head and its warm start, compiling."""

from __future__ import annotations

import os
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
    """Adam at `learning_rate`, sparse labels, accuracy."""
    model.compile(keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
