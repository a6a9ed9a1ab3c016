"""The activation cache at scale: the byte budgets, the spill to disk, shuffled blocks, the fallback line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.steps.test_tune import hp_of, load, params_for, recipe, worker_for
from tlpipe.contracts import HEAD_FILE
from tlpipe.data.arrays import NpyRows, NpyWriter
from tlpipe.data.datasets import passes_per_epoch
from tlpipe.tuning.batches import epoch_order, variant_batches
from tlpipe.tuning.cache import ActivationCache, cache_plan, disk_budget, scratch_bytes, worker_scratch
from tlpipe.tuning.trial import _prefix_model, cached_model, load_trial_data, run_trial


def test_npy_rows_read_any_order_with_runs_and_repeats(tmp_path):
    data = np.arange(50 * 6, dtype=np.float16).reshape(50, 2, 3)
    NpyWriter.write(tmp_path / "a.npy", [data[:20], data[20:]], data.shape, np.float16)
    rows = NpyRows(tmp_path / "a.npy", 5, 40)
    index = np.array([7, 8, 9, 3, 39, 0, 8, 8, 1, 2])
    np.testing.assert_array_equal(rows.read(index), data[5:45][index])
    assert rows.read(np.array([], np.int64)).shape == (0, 2, 3)


def test_block_order_is_a_permutation_of_whole_blocks_shuffled_within_windows():
    order = epoch_order(1003, seed=7, epoch=2, block=10, window=40)
    assert sorted(order) == list(range(1003))
    for begin in range(0, 1003, 40):  # each window holds whole blocks, in another order than the file's
        window = np.sort(order[begin : begin + 40])
        starts = set(window[window % 10 == 0])
        assert all(r - r % 10 in starts for r in window)
    assert not (np.diff(order[:40]) == 1).all()
    np.testing.assert_array_equal(order, epoch_order(1003, 7, 2, 10, 40))  # seeded
    assert not np.array_equal(order, epoch_order(1003, 7, 3, 10, 40))


@pytest.mark.parametrize("on_disk", [False, True])
def test_variant_batches_show_every_row_once_per_epoch_from_the_epochs_variant(tmp_path, on_disk):
    n, variants = 530, []
    for v in range(2):
        x = np.stack([np.full((2, 2, 1), 1000 * v + i, np.float16) for i in range(n)])
        if on_disk:
            NpyWriter.write(tmp_path / f"v{v}.npy", [x], x.shape, np.float16)
            x = NpyRows(tmp_path / f"v{v}.npy")
        variants.append(x)
    labels = np.arange(n, dtype=np.int32)
    ds, steps = variant_batches(variants, labels, 64, 3, seed=1)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 3 * steps and steps == 9
    for epoch in range(3):
        xs, ys = zip(*batches[epoch * steps : (epoch + 1) * steps], strict=True)
        ids = np.concatenate([x[:, 0, 0, 0] for x in xs]).astype(int) - 1000 * (epoch % 2)
        np.testing.assert_array_equal(ids, np.concatenate(ys))  # rows and labels stay paired
        assert sorted(ids) == list(range(n)) and not (np.diff(ids) == 1).all()


def test_a_short_split_makes_an_epoch_of_several_passes_each_a_new_variant_and_order():
    n = 25  # 5 images per class: one step of 32 per pass
    variants = [np.stack([np.full((2, 2, 1), 1000 * v + i, np.float16) for i in range(n)]) for v in range(3)]
    labels = np.arange(n, dtype=np.int32)
    passes = passes_per_epoch(n, 32, 4)
    assert passes == 4 and passes_per_epoch(500, 32, 4) == 1 and passes_per_epoch(50, 32, 4) == 2
    ds, steps = variant_batches(variants, labels, 32, 2, seed=1, passes=passes)
    batches = list(ds.as_numpy_iterator())
    assert steps == 4 and len(batches) == 2 * steps
    orders = []
    for p, (x, y) in enumerate(batches):  # pass p of the whole run reads variant p mod 3
        ids = x[:, 0, 0, 0].astype(int) - 1000 * (p % 3)
        np.testing.assert_array_equal(ids, y)
        orders.append(tuple(ids))
        assert sorted(ids) == list(range(n))
    assert len(set(orders)) == len(orders)  # every pass shuffled anew


def test_memory_budget_is_bytes(tiny_project, tmp_path):
    args = (tiny_project / "data/subset", tiny_project / "data/augmented", 16)
    exact = load_trial_data(*args, mode="memory").images * 16 * 16 * 3
    assert isinstance(load_trial_data(*args, memory_bytes=exact).variants[0], np.ndarray)
    assert isinstance(load_trial_data(*args, memory_bytes=exact - 1).variants[0], NpyRows)
    cache = ActivationCache(tmp_path, 1000, "float16", disk_bytes=5000)
    assert cache.in_memory(1000) and not cache.in_memory(1001)
    assert cache.refusal("b", 5000) is None and "tune.cache_disk_bytes=5000" in str(cache.refusal("b", 5001))
    assert ActivationCache(tmp_path / "new" / "dir", 1, "float16").disk_bytes > 0  # from the free space


def test_cache_plan_gives_bytes_per_freeze_point_and_one_line(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path)
    backbone = load(tiny_project, params)
    plan = cache_plan(backbone, 100, "float16")
    last = backbone.layers[-1]
    assert plan[last.name] == 100 * int(np.prod(last.output.shape[1:])) * 2 and len(plan) >= 2
    assert scratch_bytes(plan, 7) == max(plan.values()) + 7 and scratch_bytes(plan, 0, True) == sum(plan.values())
    small = min(plan.values())
    line = ActivationCache(tmp_path / "c", small, "float16", disk_bytes=max(plan.values()) - 1).describe(plan)
    assert "\n" not in line and str(tmp_path / "c") in line
    assert "(memory)" in line and "(off)" in line


def test_spilled_trial_trains_like_the_in_memory_one(tiny_project, tmp_path, capsys):
    """A memory budget of one byte puts the activations on disk: the trial still runs cached, on NpyRows read
    in shuffled blocks, and reaches the accuracy of the in-memory trial."""
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", tiny_project / "data/augmented", 16)
    hp, head = hp_of(0.5, 3e-3, 0.0, params.model.head_units), tiny_project / "models/head" / HEAD_FILE
    results = {}
    for name, budget in (("memory", 10**9), ("disk", 1)):
        cache = ActivationCache(tmp_path / name, budget, "float16", disk_bytes=10**9)
        out = run_trial(recipe(tiny_project, params, epochs=3), hp, data, load(tiny_project, params), head, cache, "t")
        assert out["mode"] == "cached"
        results[name] = out["history"]
        backbone = load(tiny_project, params)
        from tlpipe.models.backbones import apply_freeze

        apply_freeze(backbone, out["plan"])
        built = cached_model(
            backbone, out["plan"], out["model"].layers[-1], recipe(tiny_project, params), cache, "t", data
        )
        assert built is not None
        _, train, val = built
        kind = np.ndarray if name == "memory" else NpyRows
        assert all(isinstance(a, kind) for a in [*train, val])
    assert "cache_disk_bytes" not in capsys.readouterr().out
    assert abs(results["disk"]["val_accuracy"][-1] - results["memory"]["val_accuracy"][-1]) <= 0.2
    assert np.isfinite(results["disk"]["val_loss"]).all()


def test_worker_scratch_sizes_the_emptydir_from_the_plan():
    """The issue's arithmetic: ResNet50 at 224 px frozen at ratio 0.5 stores 14 x 14 x 1024 float16 per image;
    100k images split 80/10/10 with 2 copies = 250k trial images = 94 GiB of activations."""
    from tlpipe.models.backbones import load_backbone

    resnet = load_backbone("resnet50", "none", 224)
    every, half = cache_plan(resnet, 250_000), cache_plan(resnet, 250_000, min_ratio=0.5)
    assert set(half) < set(every) and max(half.values()) == 250_000 * 14 * 14 * 1024 * 2  # conv4 blocks
    assert max(every.values()) > 4 * max(half.values())  # the wide early boundaries are the largest
    images = 250_000 * 224 * 224 * 3  # uint8 trial images: over the memory budget, decoded to scratch too
    for plan, quantity in ((half, "143Gi"), (every, "470Gi")):  # as infra/README.md says
        expected = math.ceil((max(plan.values()) + images) / 0.9 / 2**30)  # the default disk budget: 90 % of free
        ratio = 0.5 if plan is half else 0.0
        assert worker_scratch(resnet, 224, 80_000, 10_000, 2, min_ratio=ratio) == f"{expected}Gi" == quantity
    assert worker_scratch(resnet, 32, 8, 1, 0) == "1Gi"


def test_a_worker_states_the_cache_plan_in_one_line_before_tuning(tiny_project, tmp_path, capsys):
    params = params_for(tiny_project, tmp_path, **{"tune.cache_max_bytes": 1})
    worker = worker_for(tiny_project, params, tmp_path / "cache")
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("tune: activation cache in")]
    plan = cache_plan(load(tiny_project, params), worker.data.images)
    assert str(tmp_path / "cache") in line and all(f"{name} " in line for name in plan)
    assert "(disk)" in line and "(memory)" not in line  # a 1-byte memory budget: every point spills to disk
    assert isinstance(worker.data.variants[0], NpyRows)  # and so do the trial images


def test_one_pass_caches_the_studys_other_boundaries_with_the_same_bytes(tiny_project, tmp_path, capsys):
    """A cached trial writes its boundary and the deeper ones of tune.freeze_ratio's range in one pass; each
    file holds the bytes the boundary's own pass (the path a later trial would take) writes. A shallower
    boundary, one outside the range, or one that does not fit the cache's free room is left for its own trial."""
    from dataclasses import replace

    from tlpipe.models.backbones import cut_points, freeze_plan

    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", tiny_project / "data/augmented", 16)
    backbone = load(tiny_project, params)
    half = freeze_plan(backbone, 0.5)
    base = recipe(tiny_project, params)
    points = [k for k in cut_points(backbone) if k > 0]
    by_itself = ActivationCache(tmp_path / "single", 10**9, "float16", disk_bytes=10**10)
    head = backbone.output.shape[-1]
    import keras

    head_model = keras.Sequential([keras.Input((head,)), keras.layers.Dense(2)])
    for name, rng, disk, expect in (
        ("deeper", (0.0, 1.0), 10**10, [k for k in points if k >= half.frozen]),
        ("range", (0.3, 0.8), 10**10, [k for k in points if half.frozen <= k <= freeze_plan(backbone, 0.8).frozen]),
        ("tight", (0.0, 1.0), cache_plan(backbone, data.images)[half.boundary] + 1, [half.frozen]),
    ):
        cache = ActivationCache(tmp_path / name, 10**9, "float16", disk_bytes=disk)
        assert cached_model(backbone, half, head_model, replace(base, freeze_range=rng), cache, "t", data)
        stored = sorted(k for k in points if cache.path(cache.key("t", k, data.fingerprint), "train").exists())
        assert stored == sorted(expect) and len(expect) < len(points), name
        (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("tune: caching activations")]
        assert line.count(",") == len(expect) - 1 and f" of {data.images} images at " in line, line
        assert all(backbone.layers[k].name in line for k in expect) and str(cache.folder) in line
        for k in expect:
            key = cache.key("t", k, data.fingerprint)
            prefix, _ = _prefix_model(backbone, k, 16, base.preprocess)
            for split, parts in (("train", data.variants), ("val", [data.val_images])):
                alone = np.concatenate(by_itself.get(key, split, prefix, parts, True))
                np.testing.assert_array_equal(np.load(cache.path(key, split)), alone, err_msg=f"{name} {k} {split}")


def test_the_disk_budget_stays_under_the_pods_scratch_limit(tmp_path, monkeypatch):
    from tlpipe.fs import SCRATCH_LIMIT_ENV

    free = disk_budget(tmp_path)
    monkeypatch.setenv(SCRATCH_LIMIT_ENV, "1Gi")
    assert disk_budget(tmp_path) == int(0.9 * 2**30) < free
    monkeypatch.setenv(SCRATCH_LIMIT_ENV, "100Ei")  # a limit above the free space: the free space decides
    assert disk_budget(tmp_path) == free
