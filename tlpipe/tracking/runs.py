"""MLflow tracking shared by the steps: one run per step, grouped under one pipeline run.

Default store: SQLite inside the project (`mlflow ui --backend-store-uri sqlite:///mlflow.db`);
MLFLOW_TRACKING_URI, read at run time, points it at a server instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tlpipe.errors import PipelineError
from tlpipe.redact import redact, redact_text
from tlpipe.step_params import StepParams
from tlpipe.tracking.lineage import git_commit, lineage_tags
from tlpipe.tracking.stores import check_http_store, check_sql_store, sql_uri

if TYPE_CHECKING:
    from mlflow import ActiveRun

# MLflow 3 opens an experiment without this tag on its GenAI overview; this value opens the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
GROUP_ENV = "TLPIPE_RUN_GROUP"
GROUP_TAG = "tlpipe.run_group"
OWNER_TAG = "tlpipe.owner"  # host:pid of the process that holds a run open


def tracking_uri(params: StepParams) -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded store from params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.default_uri


def run_group(params: StepParams) -> str:
    """The id shared by all steps of one pipeline run: TLPIPE_RUN_GROUP, else commit + params file hash."""
    explicit = os.environ.get(GROUP_ENV, "")
    if explicit and not explicit.startswith("{{"):  # a backend that left the job-id placeholder unresolved
        return explicit
    return f"{git_commit()[:12]}-{params.source_hash}"


def _client_setup(params: StepParams):
    import mlflow

    uri = sql_uri(tracking_uri(params))
    check_sql_store(uri)
    check_http_store(uri)
    mlflow.set_tracking_uri(uri)
    for attempt in (1, 2):
        try:
            experiment = mlflow.set_experiment(params.tracking.experiment)
            if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
            return mlflow, experiment
        except Exception as exc:  # connection refused, HTTP 5xx, bad URI, missing driver: tracking is unusable
            if attempt == 1 and "already exists" in str(exc):
                continue  # another worker created it between our lookup and our create
            reason = redact_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            raise PipelineError(
                f"MLflow tracking at {redact(uri)} is not usable ({reason}); "
                "check MLFLOW_TRACKING_URI or tracking.default_uri"
            ) from None
    raise AssertionError("unreachable")


def _parent_run(mlflow, experiment_id: str, group: str) -> str:
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{GROUP_TAG}` = '{group}' and tags.`tlpipe.role` = 'pipeline'",
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id, run_name=f"pipeline {group}", tags={GROUP_TAG: group, "tlpipe.role": "pipeline"}
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's process: not ours to judge
    from tlpipe.fs import pid_alive

    return pid_alive(int(pid))


def close_orphans(mlflow, experiment_id: str, step: str) -> int:
    """Runs of `step` (and their nested runs) left RUNNING by a killed process on this host -> KILLED."""
    client = mlflow.MlflowClient()
    stale = mlflow.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", output_format="list", max_results=500
    )
    closed = 0
    for run in stale:
        owner = run.data.tags.get(OWNER_TAG, "")
        if owner and run.data.tags.get("tlpipe.step") == step and not _alive(owner):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed


def prepare(params: StepParams) -> None:
    """Create the store, the experiment and this group's pipeline run once, before parallel workers.

    N tuning workers starting together on a fresh embedded SQLite store would race on its schema
    migration and on creating the parent run; `tune create-study` calls this first.
    """
    mlflow, experiment = _client_setup(params)
    _parent_run(mlflow, experiment.experiment_id, run_group(params))


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds the run context: the run is closed (KILLED), staging folders removed


def log_datasets(tags: dict[str, str]) -> None:
    """Each input with a content hash as an MLflow dataset (Datasets column): its path, digest and dvc md5."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.exceptions import MlflowException

    for key, where in tags.items():
        if key.startswith("data.") and key.endswith(".path"):
            name = key[len("data.") : -len(".path")]
            sha, md5 = tags.get(f"data.{name}.sha256", ""), tags.get(f"data.{name}.dvc_md5", "")
            if not (sha or md5):
                continue
            with warnings.catch_warnings():  # a local path matches two registered local sources; either is right
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                source = resolve_dataset_source(where)
            dataset = MetaDataset(source, name=name, digest=(sha or md5)[:36])
            found = {"sha256": sha, "dvc_md5": md5}
            tags_of = {k: v for k, v in found.items() if v}
            try:
                mlflow.log_input(dataset, context="input", tags=tags_of)
            except MlflowException:
                # Tuning workers that start together insert the same dataset row at once, and the store's
                # unique key fails the later insert. The row exists now: logging again only links it to this run.
                mlflow.log_input(dataset, context="input", tags=tags_of)


def record_outcome(parent_run_id: str, metrics: dict[str, float], params: dict[str, str], tags: dict[str, str]) -> None:
    """The pipeline run's outcome: final and baseline metrics, chosen params, registered version, duration.

    The pipeline run is created (and closed) before the first step; its end time moves to now, so its
    duration in the runs table is the pipeline's.
    """
    import time

    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    client.log_batch(
        parent_run_id,
        metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()],
    )
    for key, value in params.items():
        try:
            client.log_param(parent_run_id, key, str(value)[:500])
        except MlflowException as exc:  # logged by an earlier register of this pipeline run: keep it, tag the new one
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            client.set_tag(parent_run_id, f"latest.{key}", str(value)[:500])
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, str(value)[:5000])
    client.set_terminated(parent_run_id, end_time=int(time.time() * 1000))


@contextlib.contextmanager
def step_run(
    params: StepParams,
    step: str,
    inputs: dict[str, str] | None = None,
    validation: str | None = None,
    trained: dict | None = None,
) -> Iterator[ActiveRun]:
    """An MLflow run named after the step, nested under the pipeline run of this group, its params logged.

    Args:
        params: the step's params.
        step: the step name (the run name).
        inputs: name -> path of the inputs, logged as datasets with their content hashes.
        validation: validate_data's folder (its result is tagged).
        trained: declared param -> the value that trained the model when it differs from params.yaml (tuning
            chose it); the param shows the trained value and `configured.<param>` tags keep the configured one.
    """
    mlflow, experiment = _client_setup(params)
    closed = close_orphans(mlflow, experiment.experiment_id, step)
    if closed:
        print(f"{step}: closed {closed} MLflow run(s) left RUNNING by a killed {step} as KILLED")
    group = run_group(params)
    parent = _parent_run(mlflow, experiment.experiment_id, group)
    tags = {
        GROUP_TAG: group,
        "tlpipe.step": step,
        "tlpipe.role": "step",
        OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}",
        **lineage_tags(inputs or {}, validation),
    }
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        declared = params.declared()
        overridden = {k: v for k, v in (trained or {}).items() if k in declared and str(declared[k]) != str(v)}
        tags.update({f"configured.{k}": str(declared[k]) for k in overridden})
        with mlflow.start_run(run_name=step, parent_run_id=parent, tags=tags) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in {**declared, **overridden}.items()})
            log_datasets(tags)
            try:
                yield run
            except KeyboardInterrupt:
                mlflow.end_run("KILLED")
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def epoch_callback():
    """mlflow.keras's callback (epoch metrics, optimizer config) in a tracked step; a no-op outside one."""
    import keras
    import mlflow

    if mlflow.active_run() is None:  # a core called outside a tracked step: nothing to log to
        return keras.callbacks.Callback()
    from mlflow.keras import MlflowCallback

    class Synchronous(MlflowCallback):
        """MlflowCallback with each epoch's metrics written at once.

        Its asynchronous queue costs about 1 s at every end_run (the logging thread sits in queue.get(timeout=1)
        until it sees the stop): a fifth of a 5 s tuning trial in benchmarks/study_cost's profile, where one
        batched write per epoch costs milliseconds.
        """

        def on_epoch_end(self, epoch, logs=None):
            if self.log_every_epoch and logs is not None:
                mlflow.log_metrics(logs, step=epoch, synchronous=True, model_id=self.model_id)

        def on_test_end(self, logs=None):
            if logs is not None:
                metrics = {f"validation_{k}": v for k, v in logs.items()}
                mlflow.log_metrics(metrics, synchronous=True, model_id=self.model_id)

    return Synchronous()


def log_keras_model(model, sample) -> str:
    """Log a Keras model with its signature (inferred from two sample images); returns its models:/ URI."""
    import numpy as np
    from mlflow.models import infer_signature

    example = np.asarray(sample[:2]).astype("float32")
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    from mlflow.keras import log_model

    info = log_model(
        model, name="model", signature=signature, pip_requirements=["tensorflow-cpu==2.21.0", "keras==3.15.1"]
    )
    return info.model_uri


def finish_pipeline_run(params: StepParams, state: str, error: str = "") -> str:
    """End this group's pipeline run (the KFP exit handler): FINISHED if the pipeline succeeded, else FAILED.

    Returns:
        The pipeline run's id.
    """
    mlflow, experiment = _client_setup(params)
    run_id = _parent_run(mlflow, experiment.experiment_id, run_group(params))
    client = mlflow.MlflowClient()
    succeeded = state.upper() in ("SUCCEEDED", "SUCCESS")
    client.set_tag(run_id, "tlpipe.pipeline_state", state)
    if error and not succeeded:
        client.set_tag(run_id, "tlpipe.error", redact_text(error)[:500])
    client.set_terminated(run_id, status="FINISHED" if succeeded else "FAILED")
    return run_id
