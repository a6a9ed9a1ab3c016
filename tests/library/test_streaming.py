"""Large splits stream from their shards each epoch; small ones are decoded once. Both feed the same pixels."""

import numpy as np

from tlpipe.data import datasets
from tlpipe.data.datasets import any_batches, split_images, split_source
from tlpipe.data.records import Images


def test_streamed_batches_equal_in_memory_batches(tiny_project):
    subset = tiny_project / "data/subset"
    images, labels, _ = split_source(subset, "val", 16, "memory")
    paths, labels2, _ = split_source(subset, "val", 16, "stream")
    assert isinstance(paths, Images) and np.array_equal(labels, labels2)
    memory = np.concatenate([x.numpy() for x, _ in any_batches(images, labels, 16, 8)])
    stream = np.concatenate([x.numpy() for x, _ in any_batches(paths, labels, 16, 8)])
    np.testing.assert_array_equal(memory, stream)
    shuffled = [y.numpy() for _, y in any_batches(paths, labels, 16, 8, shuffle_seed=3)]
    assert sorted(np.concatenate(shuffled)) == sorted(labels)


def test_passes_repeat_the_split_in_memory_and_streamed_each_pass_in_a_new_order(tiny_project):
    subset = tiny_project / "data/subset"
    for mode in ("memory", "stream"):
        images, labels, _ = split_source(subset, "train", 16, mode)
        ys = np.concatenate([y.numpy() for _, y in any_batches(images, labels, 16, 7, shuffle_seed=3, passes=3)])
        n = len(labels)
        assert len(ys) == 3 * n
        assert all(sorted(ys[i * n : (i + 1) * n]) == sorted(labels) for i in range(3)), mode


def test_auto_mode_chooses_by_size(tiny_project, monkeypatch):
    subset = tiny_project / "data/subset"
    count = len(split_images(subset, "train")[0])
    monkeypatch.setattr(datasets, "IN_MEMORY_MAX_IMAGES", count - 1)
    assert isinstance(split_source(subset, "train", 16)[0], Images)
    monkeypatch.setattr(datasets, "IN_MEMORY_MAX_IMAGES", count)
    assert isinstance(split_source(subset, "train", 16)[0], np.ndarray)


def test_npy_written_by_chunks_reads_back_by_rows_and_a_short_write_leaves_nothing(tmp_path):
    import pytest

    from tlpipe.data.arrays import NpyRows, NpyWriter

    data = np.arange(7 * 2 * 3, dtype=np.float16).reshape(7, 2, 3)
    NpyWriter.write(tmp_path / "a.npy", (data[i : i + 3] for i in range(0, 7, 3)), data.shape, data.dtype)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)  # a plain .npy for any reader
    rows = NpyRows(tmp_path / "a.npy", start=2, count=4)
    assert rows.shape == (4, 2, 3) and len(rows) == 4
    np.testing.assert_array_equal(rows.read(np.array([3, 0, 2])), data[[5, 2, 4]])  # in the order asked
    np.testing.assert_array_equal(np.concatenate(list(rows.chunks(3))), data[2:6])
    with pytest.raises(ValueError, match="5 rows written, 7 declared"):
        NpyWriter.write(tmp_path / "b.npy", [data[:5]], data.shape, data.dtype)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]  # no half-written file, staged or final
