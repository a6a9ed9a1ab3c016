"""The architecture holds: one declaration for dvc.yaml and Kubeflow, exact deps and params, no step->step imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.dvc_yaml import import_closure, render
from pipelines.graph import build
from pipelines.step import declared_params
from tests.conftest import REPO, write_params
from tlpipe.config import load_params
from tlpipe.errors import ConfigError
from tlpipe.step_params import StepParams

PACKAGES = ("components", "tlpipe", "operators", "pipelines")


def repo_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n in modules)
    return found


def test_committed_dvc_yaml_is_generated_from_the_declaration():
    assert (REPO / "dvc.yaml").read_text() == render(REPO / "params.yaml"), (
        "dvc.yaml is out of date: run `python -m pipelines.dvc_yaml`"
    )


def test_stage_deps_are_the_import_closure_including_function_level_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        code = [d for d in stage["deps"] if d.startswith(PACKAGES)]
        assert code == import_closure(f"components.{name}"), name
    tune = stages["tune"]["deps"]
    assert "tlpipe/tuning/worker.py" in tune  # imported inside a function of components/tune.py
    assert "tlpipe/reports/templates" in stages["validate_data"]["deps"]  # the Jinja2 template it renders


def test_stage_params_are_exactly_the_declared_keys():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        # The step's PARAMS, plus the keys that decide where its inputs come from (pipelines/dvc_yaml._params).
        extra = [k for k in stage["params"] if k not in declared_params(name)]
        assert tuple(k for k in stage["params"] if k not in extra) == declared_params(name)
        assert set(extra) <= {"data.source", "model.backbone"}, name
        assert "tracking" not in stage["params"]


def test_every_stage_param_is_written_in_params_yaml():
    """DVC refuses a stage whose params key is not in params.yaml, even when the code has a default for it."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage["params"]:
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {key} is not in params.yaml"
                node = node[part]


def test_steps_never_import_steps_and_the_library_never_imports_steps():
    modules = repo_modules()
    for name, path in modules.items():
        deps = imports_of(path, modules)
        if name.startswith("components."):
            assert not [d for d in deps if d.startswith("components.")], f"{name} imports a step: {deps}"
        if name.startswith("tlpipe"):
            bad = [d for d in deps if d.startswith(("components", "operators", "pipelines"))]
            assert not bad, f"library module {name} imports {bad}"


def test_no_import_cycles():
    import graphlib

    modules = repo_modules()
    graph = {name: {d for d in imports_of(path, modules) if d != name} for name, path in modules.items()}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError on a cycle


def test_modules_stay_small():
    benchmarks = {f"benchmarks.{p.stem}": p for p in (REPO / "benchmarks").glob("*.py")}
    assert len(benchmarks) > 5  # the benchmarks are held to the same rule as the packages
    for name, path in {**repo_modules(), **benchmarks}.items():
        assert len(path.read_text().splitlines()) <= 300, f"{name} has grown past 300 lines: split it"


def test_a_step_cannot_read_an_undeclared_key(tmp_path):
    params = load_params(write_params(tmp_path / "params.yaml", "builtin:digits"))
    view = StepParams(params, "augment", ("augment", "model.image_size"))
    assert view.model.image_size == 16 and view.augment.copies >= 0
    with pytest.raises(ConfigError, match="model.head_units"):
        _ = view.model.head_units
    with pytest.raises(ConfigError, match="'fine_tune'"):
        _ = view.fine_tune
    assert view.read == {"augment", "model.image_size"}
    assert view.tracking.experiment  # exempt: where runs go, not what is computed


def _stages(tmp_path, **sections):
    """The steps, and the dvc.yaml stages with `${key}` filled from params.yaml as DVC does when it runs them."""
    params_file = write_params(tmp_path / "params.yaml", sections.pop("source", "builtin:digits"), **sections)
    raw = yaml.safe_load(params_file.read_text())

    def fill(value) -> Any:
        if isinstance(value, str):
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(_get(raw, m.group(1))), value)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    stages = yaml.safe_load(render(params_file))["stages"]
    filled = {
        name: {**stage, "cmd": " && ".join(fill(stage["cmd"])), "deps": fill(stage["deps"])}
        for name, stage in stages.items()
    }
    return {s.name: s for s in build(load_params(params_file))}, filled


def _get(raw: dict, key: str):
    for part in key.split("."):
        raw = raw[part]
    return raw


def test_pretrain_source_is_honoured(tmp_path):
    _, stages = _stages(tmp_path, pretrain_backbone={"source": "my/source_classes"})
    assert "--source my/source_classes" in stages["pretrain_backbone"]["cmd"]
    assert "my/source_classes" in stages["pretrain_backbone"]["deps"]
    assert "pretrain_backbone.source" not in stages["pretrain_backbone"]["params"]


def test_application_backbone_has_no_pretrain_stage(tmp_path):
    steps, stages = _stages(tmp_path, model={"backbone": "mobilenet_v2", "weights": "imagenet", "image_size": 32})
    assert "pretrain_backbone" not in stages
    assert "--backbone mobilenet_v2" in stages["fine_tune"]["cmd"]
    # So model.image_size cannot rerun a pretrain stage: none exists for an application backbone.
    assert all("models/backbone" not in s["deps"] for s in stages.values())


def test_users_own_data_replaces_make_digits(tmp_path):
    source = tmp_path / "my_images"
    source.mkdir()
    _, stages = _stages(
        tmp_path, source=str(source), model={"backbone": "resnet50", "weights": "imagenet", "image_size": 32}
    )
    assert "make_digits" not in stages
    assert str(source) in stages["make_subset"]["deps"]
    _, stages = _stages(
        tmp_path,
        source="s3://bucket/photos.zip",
        model={"backbone": "resnet50", "weights": "imagenet", "image_size": 32},
    )
    assert "s3://bucket/photos.zip" in stages["make_subset"]["deps"]
