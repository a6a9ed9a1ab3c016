"""Every switch in params runs with plain `dvc repro` on a fresh checkout.

One fresh copy of the tracked files with `tune.enabled: false` and an application backbone trained from scratch
(`model.backbone: mobilenet_v2`, `weights: none`: no pretrain_backbone stage, no make_digits source branch for
it): `python -m pipelines.dvc_yaml` then `dvc repro`, as `make run` does, must run every stage, create every
declared output (the tuning cache folder too) and every declared plot file. `tune.sweep: false` and
`tune.pruner: none` run as a DVC experiment in tests/pipeline/test_dvc_repro.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import git_project

pytestmark = pytest.mark.slow

SWITCHES = {
    "make_subset.train_per_class": 25,  # the fewest an untrained application is allowed
    "make_subset.val_per_class": 5,
    "make_subset.test_per_class": 6,
    "model.backbone": "mobilenet_v2",
    "model.weights": "none",
    "model.image_size": 32,
    "tune.enabled": False,
    "train_head.epochs": 3,
    "fine_tune.epochs": 3,
    "augment.copies": 1,
    "registry.min_accuracy": 0.0,
}


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_tune_disabled_and_an_application_backbone_run_under_plain_dvc_repro(tmp_path):
    root = tmp_path / "tlpipe"
    env = git_project(root, SWITCHES)
    _run([sys.executable, "-m", "pipelines.dvc_yaml"], root, env)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert "pretrain_backbone" not in stages and "tune" in stages
    out = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    for stage in stages:
        assert f"'{stage}'" in out, stage
    assert (root / "checkpoints/tune_cache").is_dir()
    best = json.loads((root / "reports/tune/best_params.json").read_text())
    assert best["stopped_by"] == "disabled"
    plots = json.loads(_run([sys.executable, "-m", "dvc", "plots", "show", "--json"], root, env))
    assert not plots.get("errors"), plots.get("errors")
    assert "up to date" in _run([sys.executable, "-m", "dvc", "repro"], root, env)
