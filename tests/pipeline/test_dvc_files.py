"""What DVC reads from git: dvc.yaml's per-stage check, the committed dvc.lock, and which report files git keeps.

Fast: no stage runs. The DVC workflows themselves run in tests/pipeline/test_dvc_repro.py and
tests/pipeline/test_data_dvc.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.dvc_yaml import check_stage, render
from pipelines.graph import build, file_path
from tests.conftest import REPO
from tlpipe.config import load_params

PARAMS = load_params(REPO / "params.yaml")


def _resolve(text: str, params: dict) -> str:
    """DVC's `${a.b}` templating, for the keys dvc.yaml uses."""

    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def test_committed_dvc_lock_matches_dvc_yaml():
    """Every stage of dvc.lock has dvc.yaml's commands (templates resolved), deps, outs and params keys."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    for name, stage in stages.items():
        locked = lock[name]
        cmd = [_resolve(c, raw) for c in stage["cmd"]]
        assert locked["cmd"] == cmd, name
        assert [d["path"] for d in locked["deps"]] == sorted(_resolve(d, raw) for d in stage["deps"]), name
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
        assert sorted(o["path"] for o in locked["outs"]) == sorted(outs), name
        keys = {k for section in locked.get("params", {}).values() for k in section}
        declared = set(stage.get("params", []))
        assert all(any(k == d or k.startswith(d + ".") for d in declared) or "." in k for k in keys), name


def _ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO).returncode == 0


def test_git_keeps_what_dvc_compares_and_nothing_heavy():
    steps = build(PARAMS)
    declared = [file_path(s, m) for s in steps for m in s.metrics]
    declared += [file_path(s, spec) for s in steps for spec, _ in s.plots]
    assert declared and not [p for p in declared if _ignored(p)]
    for heavy in (
        "reports/tune/history.png",
        "reports/validate_data/report.html",
        "reports/evaluate/samples.png",
        "reports/validate_data/gx/gx/great_expectations.yml",
        "reports/evaluate/evaluation.json",
        "data/subset/manifest.csv",
        "models/backbone/backbone.keras",
        "checkpoints/tune_cache/x",
    ):
        assert _ignored(heavy), heavy
    for own in ("data/raw/photos.dvc", "data/raw/.gitignore", "data/.gitignore"):
        assert not _ignored(own), own  # `dvc add data/raw/photos` as the README shows


def test_each_stage_checks_its_declaration_first(tmp_path):
    """dvc.yaml for the digits, params edited to a folder: the stage's first command stops in one line."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    dvc_file = tmp_path / "dvc.yaml"
    dvc_file.write_text(render(params))
    check_stage("make_subset", params, dvc_file)  # up to date: returns
    stages = yaml.safe_load(dvc_file.read_text())["stages"]
    assert stages["make_subset"]["cmd"][0] == "python -m pipelines.dvc_yaml --check-stage make_subset"
    params.write_text(params.read_text().replace("source: builtin:digits", f"source: {tmp_path}/photos"))
    with pytest.raises(SystemExit):
        check_stage("make_subset", params, dvc_file)
    dvc_file.write_text(render(params))
    check_stage("make_subset", params, dvc_file)
    assert "${data.source}" in yaml.safe_load(dvc_file.read_text())["stages"]["make_subset"]["cmd"][1]


def test_the_check_line_names_the_fix(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    dvc_file = tmp_path / "dvc.yaml"
    dvc_file.write_text(render(params))
    params.write_text(
        params.read_text()
        .replace("backbone: pretrain", "backbone: mobilenet_v2")
        .replace("weights: none", "weights: imagenet")
    )
    with pytest.raises(SystemExit):
        check_stage("extract_features", params, dvc_file)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run `make dvc.yaml`" in err and "extract_features" in err
    assert Path(dvc_file).is_file()


def test_artifact_file_names_live_only_in_contracts():
    """Every report or artifact file name is a constant in tlpipe/contracts/; no other module spells it."""
    import ast

    import tlpipe.contracts as contracts
    import tlpipe.contracts.evidence as evidence

    homes = {**vars(contracts), **vars(evidence)}
    names = {
        value
        for key, value in homes.items()
        if key.isupper()
        and isinstance(value, str)
        and value.endswith((".json", ".csv", ".png", ".html", ".keras", ".npy", ".npz"))
    }
    names |= {
        model.FILE
        for model in homes.values()
        if isinstance(model, type) and isinstance(getattr(model, "FILE", None), str)
    }
    assert {"gate.json", "lineage.json", "image_ids.json", "per_class.json", "predictions.npz"} <= names
    spelled = []
    for folder in ("components", "tlpipe", "operators", "pipelines"):
        for path in (REPO / folder).rglob("*.py"):
            if path.parent.name == "contracts":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value}")
    assert not spelled, spelled
