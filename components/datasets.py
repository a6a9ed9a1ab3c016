"""The input pipeline: tf.data decodes and resizes images in parallel once, then batches come from memory.

Decoded uint8 images are kept in memory (a subset is thousands of images, not millions), so every epoch
after the first costs only shuffling, one fused augmentation per batch, and the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from components.errors import DataError


def read_manifest(subset: Path) -> pd.DataFrame:
    """The subset's manifest (written by make_subset)."""
    path = Path(subset) / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run make_subset first")
    return pd.read_csv(path, dtype={"class": str}, keep_default_na=False)


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Sorted class names: index i in a model's output is class_names[i]."""
    return sorted(manifest["class"].unique())


def split_files(subset: Path, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """File paths, integer labels and class names of one split."""
    manifest = read_manifest(subset)
    classes = class_names(manifest)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DataError(f"{subset}/manifest.csv: no rows for split {split!r}")
    index = {c: i for i, c in enumerate(classes)}
    paths = [str(Path(subset) / p) for p in rows["path"]]
    return paths, np.array([index[c] for c in rows["class"]], dtype=np.int32), classes


def _decode(path: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def decode_images(paths: list[str], size: int, batch_size: int = 256, desc: str = "decode") -> np.ndarray:
    """Decode + resize files to uint8 (N, size, size, 3), in parallel, in file order."""
    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .map(lambda p: _decode(p, size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    chunks = []
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False) as bar:
        for batch in ds:
            chunks.append(batch.numpy())
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)


def load_split(subset: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (uint8), labels and class names of one split."""
    paths, labels, classes = split_files(subset, split)
    return decode_images(paths, size, desc=f"decode {split}"), labels, classes


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, augmenter=None,
            shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (float32 images, labels); shuffled each epoch when a seed is given, augmented if asked."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augmenter is not None and augmenter.active:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)
