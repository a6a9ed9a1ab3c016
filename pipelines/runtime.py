"""What runs inside a KFP task: resolve the run's params once, then call a step's `main()` on artifact paths.

The component bodies in `pipelines/training_pipeline.py` import this module (it ships in the image with
`components/`), so the same CLI core that `dvc repro` runs is what each task runs. Nothing here is read at
import time; every function is called inside a task.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

# params.yaml's own model.backbone: in dvc.yaml it is pretrain_backbone's output. In the pipeline the same
# value means "the pretrain_backbone artifact of this run" and is wired per task (`backbone_file`).
PRETRAINED_BACKBONE = "models/backbone.keras"
BACKBONE_FILE = "backbone.keras"
HEAD_FILE = "head.keras"


def packaged_params() -> Path:
    """The params.yaml a task starts from.

    TLPIPE_PARAMS (set by run-local), else params.yaml in the working directory (the image's /app), else the
    one next to components/ (a checkout).
    """
    import components

    if os.environ.get("TLPIPE_PARAMS"):
        return Path(os.environ["TLPIPE_PARAMS"])
    checkout = Path(components.__file__).resolve().parents[1]
    for candidate in (Path.cwd() / "params.yaml", checkout / "params.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("params.yaml is neither in the working directory nor next to components/")


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


def resolve_params(out_file: str, typed: dict[str, Any], params_overrides: dict[str, Any] | None) -> dict:
    """Write the run's validated params: packaged params.yaml <- typed parameters <- params_overrides.

    `params_overrides` is applied last, so an explicit dotted key there wins over a typed parameter.

    Returns:
        The resolved params as a plain mapping.
    """
    from components.config import load_params

    params = load_params(packaged_params(), {**typed, **dotted(params_overrides)})
    resolved = params.model_dump(mode="json")
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    Path(out_file).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return resolved


def backbone_file(params_file: str, backbone_dir: str) -> dict[str, str]:
    """The model.backbone wiring: the pretrained artifact when the run uses our own backbone, else nothing."""
    from components.config import load_params

    if load_params(params_file).model.backbone == PRETRAINED_BACKBONE:
        return {"model.backbone": os.path.join(backbone_dir, BACKBONE_FILE)}
    return {}


def run_step(step: str, argv: list[str], params_file: str, wiring: dict[str, Any] | None = None) -> None:
    """Run `python -m components.<step> [--params P] argv` in this process, P = params_file + wiring.

    A `PipelineError` becomes one line on stderr and exit code 2, which fails the task.
    """
    from components.cli import run_main
    from components.config import load_params

    params = load_params(params_file, wiring)
    fd, merged = tempfile.mkstemp(prefix=f"{step}-params-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump(params.model_dump(mode="json"), fh, sort_keys=False)
    if os.environ.get("TLPIPE_RUN_GROUP", "").startswith("{{"):
        # A backend that leaves the job-id placeholder unresolved in env: group by commit + params instead.
        os.environ.pop("TLPIPE_RUN_GROUP")
    module = importlib.import_module(f"components.{step}")
    # Subcommands (tune) come first: argparse takes positionals before or after the options alike.
    full = [*argv[:1], "--params", merged, *argv[1:]] if argv and not argv[0].startswith("-") else \
        ["--params", merged, *argv]
    print(f"{step}: python -m components.{step} {' '.join(full)}", flush=True)
    run_main(module.main, full)


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
