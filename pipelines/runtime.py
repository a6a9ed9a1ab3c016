"""What runs inside a KFP task: write the run's params once, then call a step's `main()` on artifact paths.

The component bodies that `pipelines/kfp_build.py` generates import this module (it ships in the image), so
the same step CLI that `dvc repro` runs is what each task runs. Nothing here is read at import time.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipelines.isolation import PARAMS_FILE, run_isolated, step_argv

ISOLATE_ENV = "TLPIPE_ISOLATE"  # run-local sets it to the pipeline root: tasks run as on a cluster


def resolve_params(base: dict[str, Any], typed: dict[str, Any], overrides: dict[str, Any] | None) -> dict:
    """The run's params: the compile-time params <- typed pipeline parameters <- params_overrides, validated.

    Returns:
        The resolved params as a plain mapping.
    """
    from tlpipe.config import parse_params, with_overrides

    raw = with_overrides(with_overrides(base, typed), overrides)
    return parse_params(raw, origin="pipeline parameters").model_dump(mode="json")


# Tasks that are not steps, and the params keys they read.
HELPER_KEYS = {"data_fingerprint": ("data", "make_digits", "storage"), "close_run": ()}


def task_params(resolved: dict[str, Any], name: str) -> str:
    """The YAML a task receives: only its own params keys (a step's PARAMS) plus `tracking`.

    KFP keys its cache on parameter values, so a task whose keys did not change is served from the cache
    when another step's params change.
    """
    from pipelines.step import declared_params

    keys = HELPER_KEYS[name] if name in HELPER_KEYS else declared_params(name)
    out: dict[str, Any] = {}
    for key in (*keys, "tracking"):
        section, _, field = key.partition(".")
        if field:
            out.setdefault(section, {})[field] = resolved[section][field]
        else:
            out[section] = resolved[section]
    return yaml.safe_dump(out, sort_keys=True)


def _params_file(params: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PARAMS_FILE
    path.write_text(params, encoding="utf-8")
    return path


def fingerprint_data(params: str) -> str:
    """`<kind>:<sha256>` of the data behind data.source now (the uncached first task on a cluster)."""
    from tlpipe.config import parse_params
    from tlpipe.data.identity import data_fingerprint

    fingerprint = data_fingerprint(parse_params(yaml.safe_load(params), origin="pipeline parameters"))
    print(f"data_fingerprint: {fingerprint}", flush=True)
    return fingerprint


def close_pipeline_run(params: str, state: str, error: str) -> None:
    """The exit handler: end this run's MLflow pipeline run, FAILED (with the error) unless it succeeded."""
    from tlpipe.cli import run_main
    from tlpipe.step_params import load_step_params
    from tlpipe.tracking.runs import finish_pipeline_run

    def close(_argv):
        with tempfile.TemporaryDirectory(prefix="tlpipe-close-") as folder:
            view = load_step_params(_params_file(params, Path(folder)), "close_run", ())
            run_id = finish_pipeline_run(view, state, error)
        print(f"close_run: pipeline state {state}; MLflow pipeline run {run_id} closed", flush=True)

    run_main(close, [])


def run_step(
    step: str,
    params: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    scratch: tuple[str, ...] = (),
    command: str = "",
    module: str = "",
    values: dict[str, str] | None = None,
) -> None:
    """Run `python -m components.<step> [command] --params P --input path ... --output path ...`.

    `params` is the task's params YAML (written to a private params.yaml), `inputs` are the task's declared
    input artifacts (paths), `values` its plain string arguments (URIs, names, numbers): on a cluster only
    the first are downloaded into the pod. `scratch` flags get a fresh temporary folder (checkpoints that
    live as long as the task). A `PipelineError` becomes one line on stderr and exit code 2, which fails the
    task. With TLPIPE_ISOLATE set to the pipeline root (run-local), the step runs as in a pod: see
    pipelines/isolation.py.
    """
    from tlpipe.cli import run_main

    module = module or f"components.{step}"
    root = os.environ.get(ISOLATE_ENV)
    if root:
        run_isolated(Path(root), module, params, inputs, outputs, values or {}, scratch, command)
        return
    params_dir = Path(tempfile.mkdtemp(prefix=f"{step}-params-"))
    argv = step_argv(
        _params_file(params, params_dir),
        {**inputs, **(values or {}), **outputs},
        {flag: tempfile.mkdtemp(prefix=f"{step}-{flag}-") for flag in scratch},
        command,
    )
    print(f"{step}: python -m {module} {' '.join(argv)}", flush=True)
    run_main(importlib.import_module(module).main, argv)


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
