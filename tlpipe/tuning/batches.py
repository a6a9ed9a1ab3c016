"""A trial's input pipeline: seeded epochs over in-memory or on-disk image/activation arrays, in tf.data.

Split out of tlpipe/tuning/trial.py (one trial's model and fit) so that each stays one concern.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf


def _float(x, y):
    return tf.cast(x, tf.float32), y


WINDOW_BYTES = 32 * 2**20  # rows gathered per read: large sequential reads, bounded memory in flight
BLOCKS_PER_WINDOW = 32  # on disk: a window is this many random blocks of consecutive rows, shuffled together


def epoch_order(n: int, seed: int, epoch: int, block: int = 1, window: int = 1) -> np.ndarray:
    """The row order of an epoch, seeded.

    A permutation (block 1), or blocks of `block` consecutive rows in random order with the rows of each
    `window` (a multiple of `block`) shuffled together, so that a window is read from disk with a few large reads.
    """
    rng = np.random.default_rng([seed, epoch])
    if block <= 1:
        return rng.permutation(n)
    full = n // block  # a short last block goes last, so every window stays whole blocks (whole reads)
    order = np.concatenate(
        [(rng.permutation(full)[:, None] * block + np.arange(block)).reshape(-1), np.arange(full * block, n)]
    )
    for begin in range(0, n, window):
        rng.shuffle(order[begin : begin + window])  # a view: shuffled in place
    return order


def _windows(arrays: list, labels: np.ndarray, batch: int, epochs: int, order) -> tf.data.Dataset:
    """Batches of epoch e from arrays[e % len(arrays)] in `order(e)`, gathered a window of rows at a time.

    The arrays are never copied into TensorFlow (no from_tensor_slices, no shuffle buffer): each window is
    gathered by index from the one resident array, or read from the .npy file, so memory holds the arrays
    once plus a few windows in flight.
    """
    first, n = arrays[0], len(labels)
    row_bytes = max(1, math.prod(first.shape[1:]) * first.dtype.itemsize)
    window = max(batch, WINDOW_BYTES // row_bytes)
    if not isinstance(first, np.ndarray):  # whole blocks per window: each block is one sequential read
        block = max(1, window // BLOCKS_PER_WINDOW)
        window = block * BLOCKS_PER_WINDOW
    order = functools.partial(order, window=window)

    def read(epoch, start):
        epoch, start = int(epoch), int(start)
        index = order(epoch)[start : start + window]
        rows = arrays[epoch % len(arrays)]
        return (rows[index] if isinstance(rows, np.ndarray) else rows.read(index)), labels[index]

    def load(epoch, start):
        x, y = tf.numpy_function(
            read, [epoch, start], (tf.as_dtype(first.dtype), tf.as_dtype(labels.dtype)), stateful=False
        )
        return tf.ensure_shape(x, (None, *first.shape[1:])), tf.ensure_shape(y, (None,))

    starts = tf.data.Dataset.range(0, n, window)

    def epoch_batches(epoch):
        windows = starts.map(lambda start: load(epoch, start), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return windows.rebatch(batch)

    ds = tf.data.Dataset.range(epochs).flat_map(epoch_batches)
    # flat_map hides the length; Keras needs it to end an evaluation without an "ran out of data" warning
    ds = ds.apply(tf.data.experimental.assert_cardinality(epochs * math.ceil(n / batch)))
    return ds.map(_float).prefetch(tf.data.AUTOTUNE)


def variant_batches(
    variants: list, labels: np.ndarray, batch: int, epochs: int, seed: int, passes: int = 1
) -> tuple[tf.data.Dataset, int]:
    """Pass p = variant p mod V, shuffled, `passes` passes an epoch; returns the dataset and steps per epoch.

    In memory: a seeded permutation per pass. On disk: shuffled blocks (epoch_order), read sequentially.
    """
    on_disk = not isinstance(variants[0], np.ndarray)

    @functools.lru_cache(maxsize=2)  # every window of an epoch slices the same order
    def order(epoch: int, window: int) -> np.ndarray:
        block = max(1, window // BLOCKS_PER_WINDOW) if on_disk else 1
        return epoch_order(len(labels), seed, epoch, block, window)

    return _windows(variants, labels, batch, epochs * passes, order), passes * math.ceil(len(labels) / batch)


def ordered_batches(images, labels: np.ndarray, batch: int = 256) -> tf.data.Dataset:
    """(float32 images, labels) in order: the validation set, from memory or from disk."""
    return _windows([images], labels, batch, 1, lambda epoch, window: np.arange(len(labels)))
