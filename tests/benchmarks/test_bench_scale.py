"""Smoke test: the scale benchmark runs every step at a tiny size and writes its report.

Timings and memory are machine-dependent and never asserted; only the shape of the result is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_scale_benchmark_writes_report(tmp_path):
    out = tmp_path / "results" / "scale.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.scale",
            "--sizes",
            "60",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"rows", "machine", "load", "parameters", "verdict"} <= result.keys()
    steps = {r["step"]: r for r in result["rows"] if r["images"] == 60}
    assert set(steps) == {"make_subset", "augment", "extract_features", "tune_trial", "fine_tune_epoch", "raw_dataset"}
    for step in ("make_subset", "augment", "extract_features", "tune_trial", "fine_tune_epoch"):
        assert steps[step]["peak_rss_mb"] > 0 and steps[step]["img_per_s"] > 0 and steps[step]["disk_mb"] >= 0
    assert (out.with_suffix(".md")).read_text().startswith("| images | step |")
    subset = tmp_path / "work" / "60" / "data"
    assert (subset / "features" / "train.npz").is_file() and (subset / "augmented" / "copies.npy").is_file()
    assert len(list((subset / "subset" / "shards").glob("*.tfrecord"))) == 3  # one shard per split at this size
    assert list((tmp_path / "work" / "60" / "tune_cache").rglob("train.npy"))  # the trial ran on cached activations
