"""Smoke tests: the study-cost and pruning benchmarks run end to end at a tiny size and write their reports.

Timings are machine-dependent and never asserted; only the shape of the results is.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = [
    "--set",
    "make_subset.train_per_class=6",
    "--set",
    "make_subset.val_per_class=4",
    "--set",
    "make_subset.test_per_class=4",
    "--set",
    "pretrain_backbone.epochs=1",
    "--set",
    "train_head.epochs=1",
    "--set",
    "tune.epochs=2",
    "--set",
    "fine_tune.epochs=1",
    "--set",
    "augment.copies=1",
]


def run(module: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "GX_ANALYTICS_ENABLED": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_study_cost_benchmark_writes_report(tmp_path):
    out, work = tmp_path / "results" / "study_cost.json", tmp_path / "work"
    run(
        "benchmarks.study_cost",
        "--sizes",
        "16",
        "--seeds",
        "42",
        "--trials",
        "2",
        "--work",
        str(work),
        "--out",
        str(out),
        "--replay",
        *TINY,
    )
    run(
        "benchmarks.study_cost",
        "overhead",
        "--root",
        str(work / "px16"),
        "--size",
        "16",
        "--out",
        str(out),
        "--repeats",
        "1",
        "--epochs",
        "2",
    )
    result = json.loads(out.read_text())
    assert {"rows", "machine", "load", "overhead"} <= result.keys()
    (row,) = result["rows"]
    assert row["image_size"] == 16 and row["seed"] == 42
    for key in ("naive_s", "tlpipe_s", "ratio", "naive_best", "tlpipe_best", "naive_test", "tlpipe_test"):
        assert isinstance(row[key], float) and row[key] >= 0, key
    assert 0 <= row["naive_test"] <= 1 and sum(row["tlpipe_states"].values()) == 2
    assert sum(row["naive_states"].values()) == 2 and row["naive_epochs"] <= 4  # it may stop early or be pruned
    assert row["naive_early_stopping"] is True and row["naive_pruner"] == "median" and row["test_images"] > 0
    assert {r["setting"] for r in result["overhead"]["rows"]} >= {"default", "spe16", "jit"}
    # where the time goes: the trials inside the study, the rest of the tune step, the final training
    assert 0 < row["tlpipe_trials_s"] < row["tlpipe_s"] and row["tlpipe_outside_trials_s"] > 0
    assert row["naive_final_s"] > 0 and row["tlpipe_total_s"] == pytest.approx(
        row["tlpipe_s"] + row["tlpipe_final_s"], abs=0.2
    )
    assert row["ratio_with_final"] == pytest.approx(row["tlpipe_total_s"] / row["naive_total_s"], rel=0.02)
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# Study cost") and "Where the time goes" in md and "**Replay**" in md
    # --replay: tune's own study evaluated the naive study's points, in the naive study's order
    naive, tl = result["runs"]["px16-seed42-naive"], result["runs"]["px16-seed42-tlpipe"]
    assert tl["replayed"] == 2 and result["parameters"]["replay"] is True
    assert [t["params"] for t in tl["trials"]] == [t["params"] for t in naive["trials"]]

    # where the time goes: both arms again under cProfile, on the project the benchmark kept
    prof = tmp_path / "results" / "study_cost_profile.json"
    run("benchmarks.study_cost_profile", "--work", str(work), "--sizes", "16", "--seed", "42", "--trials", "2",
        "--out", str(prof), *TINY)  # fmt: skip
    rows = {r["arm"]: r for r in json.loads(prof.read_text())["rows"]}
    assert set(rows) == {"tlpipe", "naive"}
    for arm, r in rows.items():
        ph = r["phases"]
        assert 0 < ph["trials (objective)"] <= ph["whole study"], arm
        assert 0 < ph["  of which validation (evaluate)"] < ph["Keras fit: train and validation steps"], arm
        assert ph["Keras fit: train and validation steps"] <= ph["trials (objective)"], arm
        assert sum(r["states"].values()) == 2 and r["shares"]["whole study"] == 1.0, arm
    assert rows["tlpipe"]["phases"]["MLflow runs and metrics"] > 0  # a run per trial; the naive arm logs none
    assert rows["naive"]["phases"]["MLflow runs and metrics"] == 0
    assert prof.with_suffix(".md").read_text().startswith("# Where a study's time goes")


@pytest.mark.slow
def test_pruning_benchmark_writes_report(tmp_path):
    out = tmp_path / "results" / "pruning.json"
    run(
        "benchmarks.pruning",
        "--seeds",
        "42",
        "--pruners",
        "none",
        "median",
        "--trials",
        "3",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
        "--set",
        "model.image_size=16",
        "--set",
        "make_digits.image_size=16",
        *TINY,
    )
    result = json.loads(out.read_text())
    assert {"rows", "machine", "load", "decision", "met", "notes"} <= result.keys()
    assert result["notes"][0].startswith("Seeds run: 42 (all planned)")
    rows = {r["pruner"]: r for r in result["rows"]}
    assert set(rows) == {"none", "median"} and rows["none"]["epochs_ratio"] == 1.0
    for row in rows.values():
        assert 0 <= row["test"] <= 1 and row["epochs"] > 0 and sum(row["states"].values()) == 3
    assert out.with_suffix(".md").read_text().startswith("# Pruning")


def _run(size, seed, arm, seconds, test):
    return {"size": size, "seed": seed, "arm": arm, "seconds": seconds, "to_best_s": 1.0, "best": 0.1,
            "test_accuracy": test, "test_images": 200, "states": {}, "epochs": 5, "params": {}}  # fmt: skip


def test_merge_keeps_only_the_earlier_runs_this_run_did_not_redo(tmp_path):
    from benchmarks.study_cost import merge_earlier

    earlier = {f"px{s}-seed{d}-{a}": _run(s, d, a, 100.0, 0.9) for s, d in ((32, 42), (96, 42)) for a in ("naive", "tlpipe")}  # fmt: skip  # noqa: E501
    out = tmp_path / "study_cost.json"
    out.write_text(json.dumps({"runs": earlier}))
    runs = {(96, 42, a): _run(96, 42, a, 50.0, 0.95) for a in ("naive", "tlpipe")}
    assert sorted(merge_earlier(out, runs)) == ["px32-seed42-naive", "px32-seed42-tlpipe"]
    assert runs[(96, 42, "naive")]["seconds"] == 50.0 and runs[(32, 42, "tlpipe")]["seconds"] == 100.0
    assert merge_earlier(tmp_path / "missing.json", {}) == []


def test_per_size_judges_the_median_ratio_and_the_mean_image_gap_at_96_px_and_up():
    from benchmarks.study_cost_report import per_size, summarize_rows

    runs = {}
    for seed, (tl_s, tl_test) in zip((42, 43, 44), ((40.0, 0.90), (60.0, 0.895), (45.0, 0.90)), strict=True):
        runs[(96, seed, "naive")] = _run(96, seed, "naive", 100.0, 0.90)
        runs[(96, seed, "tlpipe")] = _run(96, seed, "tlpipe", tl_s, tl_test)
        runs[(32, seed, "naive")] = _run(32, seed, "naive", 100.0, 0.90)
        runs[(32, seed, "tlpipe")] = _run(32, seed, "tlpipe", 90.0, 0.90)
    sizes = {s["image_size"]: s for s in per_size(summarize_rows(runs))}
    assert sizes[96]["median_ratio"] == 0.45 and sizes[96]["mean_test_images_vs_naive"] == -0.33
    assert sizes[96]["median_ratio_with_final"] is None  # no final training measured
    for seed in (42, 43, 44):  # a final training of 50 s on both arms: (45 + 50) / (100 + 50) for the median
        runs[(96, seed, "naive")]["fine_tune_s"] = runs[(96, seed, "tlpipe")]["fine_tune_s"] = 50.0
    assert per_size(summarize_rows(runs))[1]["median_ratio_with_final"] == round(95 / 150, 3)
    assert sizes[96]["goal_met"] is True and sizes[32]["goal_met"] is None  # the goal is set at >= 96 px
    runs[(96, 43, "tlpipe")]["test_accuracy"] = 0.88  # 4 images short on one seed: -1.33 on average
    assert per_size(summarize_rows(runs))[1]["goal_met"] is False


def _result(path, diffs, replay=False, data="make_subset.train_per_class=50", first_seed=42):
    rows = [{"image_size": 96, "seed": first_seed + i, "ratio": 0.5 + i / 10, "tlpipe_test": 0.5 + d / 200,
             "naive_test": 0.5, "test_images": 200} for i, d in enumerate(diffs)]  # fmt: skip
    params = {"replay": replay, "overrides": [data, "tune.epochs=3"], "trials": 8}
    path.write_text(json.dumps({"commit": "abc1234", "parameters": params, "rows": rows}))
    return path


def test_pooled_study_cost_gives_the_spread_and_the_pairs_a_one_image_verdict_needs(tmp_path):
    from scipy import stats

    from benchmarks.study_cost_pooled import main

    a, b = _result(tmp_path / "a.json", [0, -30, 53]), _result(tmp_path / "b.json", [5, 26, -53], first_seed=45)
    result = main([str(a), str(b), "--out", str(tmp_path / "pooled.json")])
    diffs = [0, -30, 53, 5, 26, -53]
    assert [p["test_images_diff"] for p in result["pairs"]] == diffs
    s = result["summary"]["all"]
    assert s["pairs"] == 6 and s["mean"] == pytest.approx(sum(diffs) / 6, abs=0.01)
    assert s["wilcoxon_p"] == pytest.approx(stats.wilcoxon([d for d in diffs if d]).pvalue, abs=1e-3)
    low, high = s["ci95"]
    assert low < s["mean"] < high and s["pairs_for_1_image"] == math.ceil((1.96 * statistics.stdev(diffs)) ** 2) > 1000
    assert s["median_ratio"] == pytest.approx(0.6) and set(result["summary"]) == {"96 px", "all"}
    assert "| all | 6 |" in (tmp_path / "pooled.md").read_text()
    # a replay run, or runs on different data, cannot be pooled: one line names the file
    with pytest.raises(SystemExit, match="c.json: a --replay run"):
        main([str(a), str(_result(tmp_path / "c.json", [1], replay=True)), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="d.json: data overrides"):
        main([str(a), str(_result(tmp_path / "d.json", [1], data="make_subset.train_per_class=10")),
              "--out", str(tmp_path / "x.json")])  # fmt: skip
    # the same (size, seed) in two files (say 8 and 16 trials) is one study's start twice, not a new pair
    with pytest.raises(SystemExit, match="e.json: 96 px seed 43 is also in a.json"):
        main([str(a), str(_result(tmp_path / "e.json", [1, 2], first_seed=43)), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
