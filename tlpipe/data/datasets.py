"""The input pipeline: tf.data decodes and resizes images in parallel once, then batches come from memory.

Decoded uint8 images are kept in memory (a subset is thousands of images, not millions), so every epoch
after the first costs only shuffling, one fused augmentation per batch, and the model.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from tlpipe.contracts import MANIFEST
from tlpipe.errors import DataError


def read_manifest(subset: Path) -> pd.DataFrame:
    """The subset's manifest (written by make_subset)."""
    path = Path(subset) / MANIFEST
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


# JPEG DCT-domain downscaling (libjpeg decodes at 1/2, 1/4 or 1/8 size, skipping most of the inverse DCT,
# colour conversion and the resize input; the entropy decoding of the file remains) is used while the decoded
# image stays at least this many times the target side; the area resize after it does the rest. With this
# margin the quality against a Lanczos reference stays that of the full-size path (benchmarks/README.md);
# decoding straight to 1x the target lost 3-5 dB.
_DCT_MARGIN = 2


def _decode_jpeg(data: tf.Tensor, size: int) -> tf.Tensor:
    """Decode a JPEG, at 1/8, 1/4 or 1/2 scale when it is still >= _DCT_MARGIN * size on its short side."""
    shape = tf.io.extract_jpeg_shape(data)
    short = tf.minimum(shape[0], shape[1])
    branches = [(short // ratio >= _DCT_MARGIN * size,
                 lambda ratio=ratio: tf.io.decode_jpeg(data, channels=3, ratio=ratio)) for ratio in (8, 4, 2)]
    return tf.case(branches, default=lambda: tf.io.decode_jpeg(data, channels=3))


def _decode(path: tf.Tensor, size: int) -> tf.Tensor:
    data = tf.io.read_file(path)
    image = tf.cond(tf.io.is_jpeg(data), lambda: _decode_jpeg(data, size),
                    lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # Shrinking on both axes: an area (box-filter) resize, antialiased too and a small fraction of the cost of
    # resize(antialias=True) (~0.05 s vs ~1 s for 800 400x300 images); enlarging on an axis: bilinear, as before.
    image = tf.cond(tf.logical_and(height >= size, width >= size),
                    lambda: tf.image.resize(image, (size, size), method="area"),
                    lambda: tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear",
                                            antialias=True))
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


@functools.cache
def _decoder(size: int):
    """_decode for one size, traced once per process rather than on every decode_images call (~0.05 s each).

    No autograph: _decode has no tensor-dependent Python control flow (it uses tf.cond/tf.case).
    """
    return tf.function(lambda path: _decode(path, size), autograph=False,
                       input_signature=[tf.TensorSpec([], tf.string)])


def decode_images(paths: list[str], size: int, batch_size: int = 256, desc: str = "decode") -> np.ndarray:
    """Decode + resize files to uint8 (N, size, size, 3), in parallel, in file order."""
    out = np.empty((len(paths), size, size, 3), np.uint8)  # filled chunk by chunk: no concatenate copy
    if not len(paths):
        return out
    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .map(_decoder(size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    done = 0
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False) as bar:
        for batch in ds:
            out[done : done + len(batch)] = batch.numpy()
            done += len(batch)
            bar.update(len(batch))
    return out


def load_split(subset: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (uint8), labels and class names of one split."""
    paths, labels, classes = split_files(subset, split)
    return decode_images(paths, size, desc=f"decode {split}"), labels, classes


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, augmenter=None,
            shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (float32 images, labels); shuffled each epoch when a seed is given, augmented if asked."""
    from tlpipe.data.augmentation import FusedAugment

    # The cache stays one tensor: the pipeline shuffles and batches indices and gathers each batch, rather
    # than slicing the cache into per-image elements that the shuffle buffer copies around (same order).
    pixels, targets = tf.constant(images), tf.constant(labels)
    ds = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        ds = ds.shuffle(max(1, len(images)), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if isinstance(augmenter, FusedAugment) and augmenter.active:
        # One pass per batch: resample the uint8 images straight to float32 (XLA-compiled, see augment.py).
        def load(index):
            return augmenter.augment(tf.gather(pixels, index), "float32"), tf.gather(targets, index)
    else:
        def load(index):
            return tf.cast(tf.gather(pixels, index), tf.float32), tf.gather(targets, index)
    # Plain TF code without tensor-dependent Python control flow: autograph conversion would only cost time.
    ds = ds.map(tf.autograph.experimental.do_not_convert(load))
    if augmenter is not None and augmenter.active and not isinstance(augmenter, FusedAugment):
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)
