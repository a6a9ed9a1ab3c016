"""Smoke test: the input-pipeline benchmark runs end to end on tiny inputs and writes its report.

Timings are machine-dependent and are never asserted; only the shape of the result is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# tf_keras (benchmarks/requirements.txt) is a benchmark-only dependency: `make venv` installs it beside the lock.

TINY = [
    "--images",
    "8",
    "--jpeg-width",
    "40",
    "--jpeg-height",
    "30",
    "--size",
    "32",
    "--batch",
    "4",
    "--epochs",
    "1",
    "--fx-images",
    "8",
    "--fx-batch",
    "4",
    "--fx-repeats",
    "1",
    "--mobilenet-size",
    "32",
]


@pytest.mark.slow
def test_input_pipeline_benchmark_writes_report(tmp_path):
    out = tmp_path / "results" / "input_pipeline.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.input_pipeline", "--out", str(out), *TINY],
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
        "input_pipeline",
        "feature_extraction",
        "targets",
        "pass",
        "wall_seconds",
        "notes",
    } <= result.keys()
    assert result["machine"]["tensorflow"] and result["machine"]["usable_cores"] >= 1
    assert result["parameters"]["images"] == 8 and result["parameters"]["epochs"] == 1

    pipeline = result["input_pipeline"]
    for loader in ("imagedatagenerator", "tlpipe_fused", "tfdata_keras_layers"):
        r = pipeline[loader]
        assert {
            "epoch_seconds",
            "total_seconds",
            "images_per_s_total",
            "images_per_s_first_epoch",
            "images_per_s_steady",
            "cpu_seconds",
            "sample",
        } <= r.keys()
        assert r["images_delivered"] == 8
        assert r["sample"]["batch_shape"][1:] == [32, 32, 3]
    assert {"value", "is", "target", "pass"} <= pipeline["ratio"].keys()
    assert isinstance(pipeline["ratio"]["pass"], bool)
    assert {"ratio_first_epoch", "ratio_steady", "fused_vs_keras_layers_steady"} <= pipeline.keys()

    assert set(result["feature_extraction"]) == {"mobilenet_v2", "vgg_style", "vgg_style_native_png"}
    for r in result["feature_extraction"].values():
        assert {"from_files_seconds", "in_memory_seconds", "ratio", "target", "pass"} <= r.keys()
        assert r["images"] == 8 and r["feature_dim"] > 0
    assert result["feature_extraction"]["vgg_style_native_png"]["counts_for_pass"] is False

    table = out.with_suffix(".md").read_text()
    assert "imagedatagenerator" in table and "tlpipe_fused" in table and "mobilenet_v2" in table
