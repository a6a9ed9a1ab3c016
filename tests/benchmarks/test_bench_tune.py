"""Smoke test: the tuning-trial benchmark runs end to end on a tiny project and writes its report.

Timings are machine-dependent and are never asserted; only the shape of the result is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = [
    "--image-size",
    "16",
    "--train-per-class",
    "6",
    "--val-per-class",
    "4",
    "--copies",
    "1",
    "--pretrain-epochs",
    "1",
    "--p1-sizes",
    "16",
    "--p1-epochs",
    "2",
    "--p1-repeats",
    "1",
    "--trials",
    "2",
    "--trial-epochs",
    "2",
    "--p5-seeds",
    "42",
]
RATIOS = [0.25, 0.5, 0.75, 0.9]


def number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.slow
def test_tune_trials_benchmark_writes_report(tmp_path):
    out = tmp_path / "results" / "tune_trials.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tune_trials", "--out", str(out), *TINY],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads(out.read_text())
    assert {
        "machine",
        "parameters",
        "project",
        "p1",
        "p5",
        "targets",
        "pass",
        "load_average_1_5_15",
        "wall_seconds",
        "notes",
    } <= result.keys()
    assert result["machine"]["usable_cores"] >= 1 and result["machine"]["optuna"]
    assert result["parameters"]["ratios"] == RATIOS and isinstance(result["pass"], bool)

    (p1,) = result["p1"]
    assert p1["image_size"] == 16 and number(p1["F_flops_per_image"]) and p1["F_flops_per_image"] > 0
    assert [r["freeze_ratio"] for r in p1["rows"]] == RATIOS
    for row in p1["rows"]:
        for key in (
            "u",
            "expected_ratio",
            "measured_ratio",
            "measured_over_expected",
            "cache_build_seconds",
            "overhead_ceiling",
        ):
            assert number(row[key]), key
        assert 0 < row["u"] <= 1 and isinstance(row["pass"], bool)
        for arm in ("full", "cached"):
            (run,) = row[arm]["runs"]
            assert len(run["train_epoch_seconds"]) == 2 and len(run["val_epoch_seconds"]) == 2
    assert number(p1["head_only_floor"]["train_epoch_median"])

    p5 = result["p5"]
    (pair,) = p5["pairs"]
    assert pair["seed"] == 42 and number(pair["epochs_ratio"]) and number(pair["best_shortfall"])
    for key in ("unpruned", "pruned"):
        study = pair[key]
        assert study["epochs_spent"] > 0 and number(study["best_value"]) and len(study["trials"]) == 2
    assert pair["unpruned"]["pruner"] == "none" and pair["pruned"]["pruner"] == "median"
    assert isinstance(pair["epochs_pass"], bool) and isinstance(pair["best_pass"], bool)

    table = out.with_suffix(".md").read_text()
    assert "## P1 at 16 px" in table and "## P5" in table and "| 0.9 |" in table
