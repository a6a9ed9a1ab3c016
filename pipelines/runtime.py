"""What runs inside a KFP task: write the run's params once, then call a step's `main()` on artifact paths.

The component bodies that `pipelines/kfp_build.py` generates import this module (it ships in the image), so
the same step CLI that `dvc repro` runs is what each task runs. Nothing here is read at import time.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
ISOLATE_ENV = "TLPIPE_ISOLATE"  # run-local sets it to the pipeline root: tasks run as on a cluster


def dotted(overrides: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Flatten `{"fine_tune": {"epochs": 2}}` and `{"fine_tune.epochs": 2}` alike to dotted keys."""
    out: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(dotted(value, f"{name}."))
        else:
            out[name] = value
    return out


def resolve_params(out_dir: str, base: dict[str, Any], typed: dict[str, Any],
                   overrides: dict[str, Any] | None) -> dict:
    """Write `out_dir/params.yaml`: the compile-time params <- typed pipeline parameters <- params_overrides.

    Returns:
        The resolved params as a plain mapping.
    """
    from tlpipe.config import parse_params

    raw = json.loads(json.dumps(base))
    for key, value in {**typed, **dotted(overrides)}.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    resolved = parse_params(raw, origin="pipeline parameters").model_dump(mode="json")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / PARAMS_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return resolved


def run_step(step: str, params_dir: str, inputs: dict[str, str], outputs: dict[str, str],
             scratch: tuple[str, ...] = (), command: str = "", module: str = "",
             values: dict[str, str] | None = None) -> None:
    """Run `python -m components.<step> [command] --params P --input path ... --output path ...`.

    `inputs` are the task's declared input artifacts (paths), `values` its plain string arguments (URIs,
    names, numbers): on a cluster only the first are downloaded into the pod. `scratch` flags get a fresh
    temporary folder (checkpoints that live as long as the task). A `PipelineError` becomes one line on
    stderr and exit code 2, which fails the task. With TLPIPE_ISOLATE set to the pipeline root (run-local),
    the step runs as on a cluster: see `run_isolated`.
    """
    from tlpipe.cli import run_main

    module = module or f"components.{step}"
    root = os.environ.get(ISOLATE_ENV)
    if root:
        run_isolated(Path(root), module, params_dir, inputs, outputs, values or {}, scratch, command)
        return
    argv = _argv(params_dir, {**inputs, **(values or {}), **outputs}, scratch, command, step)
    print(f"{step}: python -m {module} {' '.join(argv)}", flush=True)
    run_main(importlib.import_module(module).main, argv)


def _argv(params_dir: str, flags: dict[str, str], scratch: tuple[str, ...], command: str, step: str) -> list[str]:
    argv = ([command] if command else []) + ["--params", str(Path(params_dir) / PARAMS_FILE)]
    for flag, value in flags.items():
        argv += [f"--{flag}", value]
    for flag in scratch:
        argv += [f"--{flag}", tempfile.mkdtemp(prefix=f"{step}-{flag}-")]
    return argv


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    elif source.exists():
        shutil.copy2(source, target)


def run_isolated(root: Path, module: str, params_dir: str, inputs: dict[str, str], outputs: dict[str, str],
                 values: dict[str, str], scratch: tuple[str, ...], command: str) -> None:
    """Run a step the way the KFP launcher does: it sees copies of its declared inputs and nothing else.

    The declared input artifacts and the params are copied into a private folder (what the launcher
    downloads into a pod), the step runs in a child process whose view of the pipeline root is an empty
    tmpfs (a private mount namespace, so tasks that kfp.local runs in parallel are not affected), in an
    empty working directory, and its outputs are moved into place afterwards (the launcher's upload). A
    step that reads another task's output through an undeclared path fails here as it would on a cluster.
    Without the privilege to make a mount namespace (not root), the root stays visible and this says so.
    """
    work = Path(tempfile.mkdtemp(prefix="tlpipe-task-"))
    try:
        local_inputs = {}
        for name, value in inputs.items():
            local_inputs[name] = str(work / "inputs" / name / Path(value).name)
            _copy(Path(value), Path(local_inputs[name]))
        _copy(Path(params_dir), work / "params")
        local_outputs = {name: str(work / "outputs" / name) for name in outputs}
        (work / "outputs").mkdir()
        step = module.rsplit(".", 1)[-1]
        argv = _argv(str(work / "params"), {**local_inputs, **values, **local_outputs}, scratch, command, step)
        cmd = [sys.executable, "-m", module, *argv]
        if os.geteuid() == 0 and shutil.which("unshare"):
            hide = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh", str(root), *cmd]
        else:
            print(f"{step}: cannot make a private mount namespace (needs root): the pipeline root stays visible")
        print(f"{step}: isolated: python -m {module} {' '.join(argv)}", flush=True)
        code = subprocess.run(cmd, cwd=work / "outputs", check=False).returncode
        if code:
            raise SystemExit(code)
        for name, target in outputs.items():
            produced = Path(local_outputs[name])
            if produced.exists():
                if Path(target).is_dir():
                    shutil.rmtree(target)
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(produced), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def numeric_metrics(data: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics mapping, nested keys dotted (what KFP's Metrics artifact can show)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(numeric_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def log_metrics(metrics_artifact, path: str | Path) -> dict[str, float]:
    """Copy a step's metrics.json numbers into a KFP `dsl.Metrics` output (same numbers as DVC and MLflow)."""
    values = numeric_metrics(json.loads(Path(path).read_text(encoding="utf-8")))
    for key, value in values.items():
        metrics_artifact.log_metric(key, value)
    return values
