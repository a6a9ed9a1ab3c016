"""Image shards: make_subset writes each split as a few TFRecord files, and the readers stream them.

A subset of 100,000 images is about a dozen files rather than 100,000: the KFP launcher copies an artifact
object by object into every pod that reads it, and DVC hashes and pushes a folder file by file. TFRecord is
TensorFlow's own streaming format (tf.data reads it sequentially with bounded buffers, several shards
interleaved for shuffled training), so no reader holds a split in memory unless it decides to.

Each record holds the normalised image bytes (as make_subset accepted them), the image's position in its
split (the manifest's row order within the split) and its manifest `path`, the image's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARD_BYTES = 64 * 2**20  # a shard is closed once it holds this many image bytes
SHUFFLE_BUFFER = 8192  # records (encoded bytes, a few KB each) in the streaming shuffle buffer


_opened: set[str] = set()  # shards this process streamed: where to look when TensorFlow reports a damaged record


def shard_name(split: str, number: int) -> str:
    """The file name of shard `number` of `split`."""
    return f"{split}-{number:05d}.tfrecord"


class ShardWriter:
    """Writes one split's records in order, starting a new shard every SHARD_BYTES."""

    def __init__(self, folder: Path, split: str, max_bytes: int | None = None):
        self.folder, self.split = Path(folder), split
        self.max_bytes = SHARD_BYTES if max_bytes is None else max_bytes
        self.count, self._number, self._bytes, self._writer = 0, -1, 0, None

    def write(self, name: str, data: bytes) -> str:
        """Append one image; returns the shard file name it went into."""
        import tensorflow as tf

        if self._writer is None or self._bytes >= self.max_bytes:
            self.close()
            self._number += 1
            self._bytes = 0
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = tf.io.TFRecordWriter(str(self.folder / shard_name(self.split, self._number)))
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[self.count])),
            "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        self._writer.write(example.SerializeToString(deterministic=True))  # map order fixed: same bytes every run
        self.count += 1
        self._bytes += len(data)
        return shard_name(self.split, self._number)

    def close(self) -> None:
        """Finish the open shard."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _parse(record):
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "index": tf.io.FixedLenFeature([], tf.int64),
        "path": tf.io.FixedLenFeature([], tf.string),
    }
    parsed = tf.io.parse_single_example(record, spec)
    return parsed["image"], parsed["index"], parsed["path"]


@dataclass(frozen=True)
class Images:
    """One split's images in a subset: its shard files (in order) and record count, or a selection of them.

    Behaves like a sequence for the readers' needs: `len()`, and `images[i:j]` / `images[[i, k]]` give a
    selection that decodes only those records (a pass over the shards' bytes, no decoding of the others).
    """

    shards: tuple[str, ...]
    count: int
    selection: tuple[int, ...] | None = field(default=None)

    def __len__(self) -> int:
        return self.count if self.selection is None else len(self.selection)

    def __getitem__(self, key) -> Images:
        positions = range(self.count) if self.selection is None else self.selection
        picked = positions[key] if isinstance(key, slice) else [positions[int(i)] for i in np.atleast_1d(key)]
        return Images(self.shards, self.count, tuple(int(i) for i in picked))

    def dataset(self, shuffle_seed: int | None = None):
        """tf.data of (encoded image, position in split): in order, or shuffled (per epoch) with bounded memory.

        With a selection, only the selected records in split order (the caller reorders if it needs to).
        """
        import tensorflow as tf

        _opened.update(str(s) for s in self.shards)
        if shuffle_seed is None:
            ds = tf.data.TFRecordDataset(list(self.shards)).map(lambda r: _parse(r)[:2])
            if self.selection is not None:
                wanted = sorted(set(self.selection))
                if not wanted:
                    return ds.take(0)
                positions = tf.constant(wanted, tf.int64)
                # tf.data unpacks an (image, index) element into two arguments; its annotation says one tuple
                ds = ds.take(wanted[-1] + 1).filter(
                    lambda image, index: tf.reduce_any(tf.equal(index, positions))  # pyright: ignore[reportArgumentType]
                )
            return ds
        if self.selection is not None:
            raise ValueError("a selection of records streams in order only")
        # Shards in a new order every epoch, a few read at once, then a bounded shuffle buffer of records.
        files = tf.data.Dataset.from_tensor_slices(list(self.shards)).shuffle(
            len(self.shards), seed=shuffle_seed, reshuffle_each_iteration=True
        )
        ds = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(4, len(self.shards)),
            block_length=16,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.map(lambda r: _parse(r)[:2], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.shuffle(max(1, min(self.count, SHUFFLE_BUFFER)), seed=shuffle_seed, reshuffle_each_iteration=True)


def records(shards: list[str | Path]) -> Iterator[tuple[str, bytes]]:
    """(manifest path, image bytes) of every record of `shards`, in order (a missing shard raises)."""
    import tensorflow as tf

    from tlpipe.errors import DataError

    for shard in shards:
        try:
            for image, _, path in tf.data.TFRecordDataset(str(shard)).map(_parse).as_numpy_iterator():
                yield path.decode(), image
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            raise DataError(f"{shard}: damaged shard ({type(exc).__name__}); rerun make_subset") from None


def damaged_shard() -> str | None:
    """The first shard this process streamed that does not read to the end.

    TensorFlow's DataLossError from inside a training loop does not say which file it was reading.
    """
    import tensorflow as tf

    for shard in sorted(_opened):
        try:
            for _ in tf.data.TFRecordDataset(shard):
                pass
        except (tf.errors.DataLossError, tf.errors.NotFoundError):
            return shard
    return None
