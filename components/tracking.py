"""MLflow tracking shared by the training steps: one run per step, grouped under one pipeline run.

Default store: SQLite inside the project (`mlflow ui --backend-store-uri sqlite:///mlflow.db`);
MLFLOW_TRACKING_URI, read at run time, points it at a server instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

from components.config import Params, flatten
from components.errors import PipelineError

GROUP_ENV = "TLPIPE_RUN_GROUP"
GROUP_TAG = "tlpipe.run_group"


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded store from params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.default_uri


def git_commit() -> str:
    """The current commit (with '-dirty' when the tree has changes), or 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("TLPIPE_GIT_COMMIT", "unknown")
    return head + ("-dirty" if dirty else "")


def content_hash(path: str | Path) -> str:
    """A sha256 over a file, or over a folder's relative paths and file contents (sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def dvc_lock_hashes(paths: list[str], lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 that dvc.lock records for each path (as an output of an earlier stage), where it has one."""
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    recorded = {}
    for stage in stages.values():
        for item in stage.get("outs", []) + stage.get("deps", []):
            recorded.setdefault(os.path.normpath(item["path"]), item.get("md5", ""))
    return {p: recorded[os.path.normpath(p)] for p in paths if os.path.normpath(p) in recorded}


def lineage_tags(inputs: dict[str, str], validation: str | None) -> dict[str, str]:
    """Tags tying a run to its code and data: git commit, dvc.lock md5 and content hash of each input."""
    tags = {"git_commit": git_commit()}
    lock = dvc_lock_hashes(list(inputs.values()))
    for name, path in inputs.items():
        if Path(path).exists():
            tags[f"data.{name}.sha256"] = content_hash(path)
        if path in lock:
            tags[f"data.{name}.dvc_md5"] = lock[path]
    if validation and Path(validation).is_file():
        result = json.loads(Path(validation).read_text(encoding="utf-8"))
        tags["data_validation"] = "passed" if result.get("success") else "failed"
        tags["data_validation.expectations"] = str(result.get("expectations", ""))
        tags["data_validation.quarantined"] = str(result.get("quarantined", ""))
    return tags


def run_group(params: Params) -> str:
    """The id shared by all steps of one pipeline run: TLPIPE_RUN_GROUP, else commit + params hash."""
    explicit = os.environ.get(GROUP_ENV)
    if explicit:
        return explicit
    blob = json.dumps(params.model_dump(), sort_keys=True, default=str).encode()
    return f"{git_commit()[:12]}-{hashlib.sha256(blob).hexdigest()[:8]}"


def _client_setup(params: Params):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params))
    for attempt in (1, 2):
        try:
            return mlflow, mlflow.set_experiment(params.tracking.experiment)
        except Exception as exc:  # connection refused, HTTP 5xx, bad URI: all mean tracking is unusable
            if attempt == 1 and "already exists" in str(exc):
                continue  # another worker created it between our lookup and our create
            raise PipelineError(f"MLflow tracking at {tracking_uri(params)} is not usable "
                                f"({str(exc).splitlines()[0]})") from None
    raise AssertionError("unreachable")


def _parent_run(mlflow, experiment_id: str, group: str) -> str:
    found = mlflow.search_runs([experiment_id], filter_string=f"tags.`{GROUP_TAG}` = '{group}' "
                               "and tags.`tlpipe.role` = 'pipeline'", max_results=1, output_format="list")
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=f"pipeline {group}",
                            tags={GROUP_TAG: group, "tlpipe.role": "pipeline"})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def prepare(params: Params) -> None:
    """Create the store, the experiment and this group's pipeline run once, before parallel workers.

    N tuning workers starting together on a fresh embedded SQLite store would race on its schema
    migration and on creating the parent run; `tune create-study` calls this first.
    """
    mlflow, experiment = _client_setup(params)
    _parent_run(mlflow, experiment.experiment_id, run_group(params))


@contextlib.contextmanager
def step_run(params: Params, step: str, inputs: dict[str, str] | None = None,
             validation: str | None = None) -> Iterator[object]:
    """An MLflow run named after the step, nested under the pipeline run of this group, params logged."""
    mlflow, experiment = _client_setup(params)
    group = run_group(params)
    parent = _parent_run(mlflow, experiment.experiment_id, group)
    tags = {GROUP_TAG: group, "tlpipe.step": step, "tlpipe.role": "step", **lineage_tags(inputs or {}, validation)}
    with mlflow.start_run(run_name=step, parent_run_id=parent, tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in flatten(params).items()})
        yield run


def log_json(data: dict, name: str) -> None:
    """Log a dict as a JSON artifact of the active run."""
    import mlflow

    mlflow.log_dict(data, name)


class EpochLogger:
    """A Keras callback that logs every epoch's metrics to the active MLflow run."""

    def __new__(cls, prefix: str = ""):
        import keras
        import mlflow

        class _Logger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if mlflow.active_run() is None:
                    return  # a core called outside a tracked step: nothing to log to
                mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in (logs or {}).items()}, step=epoch)

        return _Logger()
