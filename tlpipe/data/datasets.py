"""The input pipeline: tf.data decodes and resizes images in parallel, from the subset's shards or files.

make_subset stores each split as a few TFRecord shards (tlpipe.data.records). Small splits are decoded once
and kept in memory, so every epoch after the first costs only shuffling, one fused augmentation per batch,
and the model. Large ones stream from the shards every epoch with bounded buffers. Steps that pass over a
split once (feature extraction, the pre-augmented copies) stream it: `decoded_chunks` yields bounded chunks,
and tlpipe.data.arrays writes them chunk by chunk, so their memory does not grow with the dataset.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tlpipe.console import progress
from tlpipe.contracts import MANIFEST, SHARDS_DIR
from tlpipe.data.records import Images
from tlpipe.errors import DataError


def read_manifest(subset: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The subset's manifest (written by make_subset), optionally only some columns."""
    path = Path(subset) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; run make_subset first")
    return pd.read_csv(path, dtype={"class": str}, keep_default_na=False, usecols=columns)


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Sorted class names: index i in a model's output is class_names[i]."""
    return sorted(manifest["class"].unique())


def split_images(subset: Path, split: str) -> tuple[Images, np.ndarray, list[str]]:
    """The split's images (its shards), integer labels in record order, and the class names."""
    manifest = read_manifest(subset, ["class", "split", "shard"])  # the sha256 etc. of 100k rows are not needed
    classes = class_names(manifest)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DataError(f"{subset}/{MANIFEST}: no rows for split {split!r}")
    index = {c: i for i, c in enumerate(classes)}
    shards = tuple(str(Path(subset) / SHARDS_DIR / s) for s in dict.fromkeys(rows["shard"]))
    return Images(shards, len(rows)), np.array([index[c] for c in rows["class"]], dtype=np.int32), classes


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
    branches = [
        (short // ratio >= _DCT_MARGIN * size, lambda ratio=ratio: tf.io.decode_jpeg(data, channels=3, ratio=ratio))
        for ratio in (8, 4, 2)
    ]
    return tf.case(branches, default=lambda: tf.io.decode_jpeg(data, channels=3))


def _decode(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image bytes -> uint8 (size, size, 3)."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: _decode_jpeg(data, size),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    return _resize(image, size)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """An (h, w, 3) image -> uint8 (size, size, 3)."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # Shrinking on both axes: an area (box-filter) resize, antialiased too and a small fraction of the cost of
    # resize(antialias=True) (~0.05 s vs ~1 s for 800 400x300 images); enlarging on an axis: bilinear, as before.
    image = tf.cond(
        tf.logical_and(height >= size, width >= size),
        lambda: tf.image.resize(image, (size, size), method="area"),
        lambda: tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True),
    )
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


@functools.cache
def _decoder(size: int):
    """_decode for one size, traced once per process rather than on every decode_images call (~0.05 s each).

    No autograph: _decode has no tensor-dependent Python control flow (it uses tf.cond/tf.case).
    """
    return tf.function(
        lambda data: _decode(data, size), autograph=False, input_signature=[tf.TensorSpec([], tf.string)]
    )


def _encoded(source: Images | list[str]) -> tf.data.Dataset:
    """Encoded bytes in order: a split's records, or image files (a list of paths)."""
    if isinstance(source, Images):
        return source.dataset().map(lambda data, index: data)
    return tf.data.Dataset.from_tensor_slices([str(p) for p in source]).map(tf.io.read_file)


def decoded_chunks(
    source: Images | list[str], size: int, batch_size: int = 256, desc: str = "decode"
) -> Iterator[np.ndarray]:
    """Decode + resize in parallel, yielding uint8 (<= batch_size, size, size, 3) chunks in order.

    `source` is a split's images (or a selection of them: split order) or a list of image files. Only a couple
    of chunks are in flight (prefetch 2), so memory is bounded whatever the number of images.
    """
    if not len(source):
        return
    ds = (
        _encoded(source)
        .map(_decoder(size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(2)
    )
    with progress(len(source), desc) as bar:
        for batch in ds:
            bar.update(len(batch))
            yield batch.numpy()


def decode_images(source: Images | list[str], size: int, batch_size: int = 256, desc: str = "decode") -> np.ndarray:
    """Decode + resize to uint8 (N, size, size, 3), in parallel, in the order of `source` (a selection too)."""
    out = np.empty((len(source), size, size, 3), np.uint8)  # filled chunk by chunk: no concatenate copy
    done = 0
    for batch in decoded_chunks(source, size, batch_size, desc):
        out[done : done + len(batch)] = batch
        done += len(batch)
    if isinstance(source, Images) and source.selection is not None:  # decoded in split order: put back
        order = sorted(set(source.selection))
        return out[np.searchsorted(order, source.selection)] if len(order) else out
    return out


def decode_bytes(blobs: list[bytes], size: int) -> np.ndarray:
    """Encoded images (PNG, JPEG, GIF, BMP bytes) -> uint8 (N, size, size, 3), decoded as the splits are.

    Raises:
        DataError: an item is not an image TensorFlow can decode (names its position).
    """
    out = np.empty((len(blobs), size, size, 3), np.uint8)
    for i, blob in enumerate(blobs):
        try:
            out[i] = _decoder(size)(tf.constant(blob)).numpy()
        except tf.errors.InvalidArgumentError:
            raise DataError(f"image {i}: not a PNG/JPEG/GIF/BMP image ({len(blob)} bytes)") from None
    return out


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 image of any size, (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) -> uint8 (size, size, 3).

    Grey is repeated to RGB and alpha dropped, as make_subset converts files; resized as the splits are.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise DataError(
            f"an image array must be uint8 (h, w), (h, w, 1), (h, w, 3) or (h, w, 4); got {image.dtype} {image.shape}"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    return _resize(tf.constant(image), size).numpy()


def load_split(subset: Path, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (uint8), labels and class names of one split."""
    images, labels, classes = split_images(subset, split)
    return decode_images(images, size, desc=f"decode {split}"), labels, classes


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    augmenter=None,
    shuffle_seed: int | None = None,
    passes: int = 1,
) -> tf.data.Dataset:
    """Batches of (float32 images, labels); shuffled each epoch when a seed is given, augmented if asked.

    `passes` > 1 makes one dataset of that many passes over the images, each shuffled and augmented anew.
    """
    from tlpipe.data.augmentation import FusedAugment

    # The cache stays one tensor: the pipeline shuffles and batches indices and gathers each batch, rather
    # than slicing the cache into per-image elements that the shuffle buffer copies around (same order).
    pixels, targets = tf.constant(images), tf.constant(labels)
    ds = tf.data.Dataset.range(len(images))
    if shuffle_seed is not None:
        ds = ds.shuffle(max(1, len(images)), seed=shuffle_seed, reshuffle_each_iteration=True)
    ds = ds.repeat(passes).batch(batch_size)
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


# Up to this many images a split is decoded once and kept in memory (every later epoch costs only the
# model); above it, each epoch decodes from the files, so memory stays flat whatever the dataset size.
IN_MEMORY_MAX_IMAGES = 20_000


def stream_batches(
    images: Images,
    labels: np.ndarray,
    size: int,
    batch_size: int,
    *,
    augmenter=None,
    shuffle_seed: int | None = None,
    passes: int = 1,
) -> tf.data.Dataset:
    """Batches decoded from the shards every epoch (bounded memory): the streaming twin of `batches`."""
    targets = tf.constant(labels)
    decode = _decoder(size)
    ds = images.dataset(shuffle_seed).map(
        lambda data, index: (decode(data), tf.gather(targets, index)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.repeat(passes).batch(batch_size)
    if augmenter is not None and augmenter.active:
        ds = ds.map(lambda x, y: (augmenter.augment(x, "float32"), y))
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def split_source(subset: Path, split: str, size: int, mode: str = "auto"):
    """(decoded images or the split's shards, labels, classes): in memory for small splits, streamed otherwise.

    `mode` is "memory", "stream" or "auto" (memory up to IN_MEMORY_MAX_IMAGES images).
    """
    images, labels, classes = split_images(subset, split)
    if mode == "memory" or (mode == "auto" and len(images) <= IN_MEMORY_MAX_IMAGES):
        return decode_images(images, size, desc=f"decode {split}"), labels, classes
    return images, labels, classes


def passes_per_epoch(images: int, batch_size: int, min_steps: int) -> int:
    """Passes over the training split that make an epoch of at least `min_steps` steps (1 for most data)."""
    return max(1, math.ceil(min_steps / max(1, math.ceil(images / batch_size))))


def any_batches(source, labels: np.ndarray, size: int, batch_size: int, **kwargs) -> tf.data.Dataset:
    """`batches` for decoded images, `stream_batches` for a split's shards."""
    if isinstance(source, np.ndarray):
        return batches(source, labels, batch_size, **kwargs)
    return stream_batches(source, labels, size, batch_size, **kwargs)
