"""Smoke test: the regimes benchmark runs the whole pipeline on a tiny project and writes its report.

Accuracies at this size mean nothing and timings are machine-dependent: only the shape of the result is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = [
    "make_digits.image_size=16",
    "model.image_size=16",
    "make_subset.train_per_class=6",
    "make_subset.val_per_class=3",
    "make_subset.test_per_class=3",
    "pretrain_backbone.epochs=1",
    "train_head.epochs=1",
    "tune.n_trials=2",
    "tune.epochs=1",
    "tune.sweep=false",
    "fine_tune.epochs=1",
]


def number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_overrides_are_yaml_and_dotted():
    from tlpipe.config import parse_assignments, with_overrides

    pairs = ["tune.epochs=6", "tune.regimes=[transfer]", "fine_tune.monitor=val_accuracy", "seed=43"]
    params = with_overrides({"tune": {"epochs": 10}}, parse_assignments(pairs, "--set"))
    assert params == {
        "tune": {"epochs": 6, "regimes": ["transfer"]},
        "fine_tune": {"monitor": "val_accuracy"},
        "seed": 43,
    }


@pytest.mark.slow
def test_regimes_benchmark_writes_report(tmp_path):
    out = tmp_path / "results" / "regimes.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.regimes",
        "--seeds",
        "5",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
        *(part for pair in TINY for part in ("--set", pair)),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    result = json.loads(out.read_text())
    assert {"rows", "goal", "met", "machine", "seconds", "variants"} <= result.keys()
    assert [r["regime"] for r in result["rows"]] == ["final", "frozen_features", "scratch"]
    for row in result["rows"]:
        assert row["seed"] == 5 and row["variant"] == "default" and row["test_images"] == 15
        assert number(row["accuracy"]) and 0.0 <= row["accuracy"] <= 1.0
        assert row["final_regime"] in ("transfer", "scratch") and number(row["freeze_ratio"])
    assert len(result["met"]) == 1 and isinstance(result["met"][0], bool)
    assert result["variants"]["default"]["overrides"] == TINY

    # A second variant on the same projects (pinned hyperparameters, tune skipped) merges into the same file.
    # It starts from the first run's projects: their params and the steps up to train_head.
    pinned = [
        sys.executable,
        "-m",
        "benchmarks.regimes",
        "--seeds",
        "5",
        "--out",
        str(out),
        "--variant",
        "pinned",
        "--work",
        str(tmp_path / "work2"),
        "--upstream",
        str(tmp_path / "work"),
        "--pin",
        "regime=transfer,freeze_ratio=0,learning_rate=1e-3,train_bn=true",
        "--set",
        "fine_tune.patience=1",
    ]
    proc = subprocess.run(pinned, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"default", "pinned"} and len(result["rows"]) == 6
    assert result["variants"]["pinned"]["based_on"] == "default"
    final = next(r for r in result["rows"] if r["variant"] == "pinned" and r["regime"] == "final")
    assert final["train_bn"] is True and final["learning_rate"] == 1e-3 and final["tune_best_value"] is None
    table = out.with_suffix(".md").read_text()
    assert "## default" in table and "## pinned" in table and "| 5 |" in table
