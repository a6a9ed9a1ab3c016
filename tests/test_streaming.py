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


def test_auto_mode_chooses_by_size(tiny_project, monkeypatch):
    subset = tiny_project / "data/subset"
    count = len(split_images(subset, "train")[0])
    monkeypatch.setattr(datasets, "IN_MEMORY_MAX_IMAGES", count - 1)
    assert isinstance(split_source(subset, "train", 16)[0], Images)
    monkeypatch.setattr(datasets, "IN_MEMORY_MAX_IMAGES", count)
    assert isinstance(split_source(subset, "train", 16)[0], np.ndarray)
