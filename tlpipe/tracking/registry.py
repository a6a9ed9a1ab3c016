"""The model registry: aliases (@champion, @challenger, @previous), gated promotion, rollback, status.

Every move is recorded on the versions as tags: who, when and why. Operator commands (operators/registry.py)
and the register step use these functions; nothing here prints.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path

from tlpipe.errors import PipelineError
from tlpipe.redact import redact, redact_text

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


def connect(params):
    """An MlflowClient on the tracking URI, checked to answer (bounded retries), or a one-line error.

    MLflow's HTTP retries are capped from `registry.http_retries` / `registry.http_timeout` so a server that
    is down fails in seconds, before anything is written.
    """
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError  # a SQL tracking store that cannot be reached

    from tlpipe.tracking.runs import tracking_uri
    from tlpipe.tracking.stores import check_http_store, check_sql_store, sql_uri

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(params.registry.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(params.registry.http_timeout)
    # Download bars are carriage-return noise in logs and would bury a refusal's one line on stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = sql_uri(tracking_uri(params))
    check_sql_store(uri, params.registry.http_retries, "MLflow registry")
    check_http_store(uri, params.registry.http_retries, "MLflow registry")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = mlflow.MlflowClient(uri, uri)
        client.search_registered_models(max_results=1)
    except (MlflowException, SQLAlchemyError, OSError, ImportError, ValueError) as exc:  # down, refused, no driver
        reason = redact_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        raise PipelineError(
            f"MLflow registry at {redact(uri)} did not answer after {params.registry.http_retries} "
            f"retries ({reason}); start the server or set MLFLOW_TRACKING_URI"
        ) from None
    return client


def alias_version(client, name: str, alias: str):
    """The model version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(client, name: str, version: str | int):
    """A model version by number or by `@alias`; a one-line error if there is none."""
    from mlflow.exceptions import MlflowException

    text = str(version)
    if text.startswith("@"):
        found = alias_version(client, name, text[1:])
        if found is None:
            raise PipelineError(f"model {name!r} has no version with alias {text}; see `registry status`")
        return found
    try:
        return client.get_model_version(name, text)
    except MlflowException:
        raise PipelineError(f"model {name!r} has no version {text}; see `registry status`") from None


def whoami() -> str:
    """Who is acting: TLPIPE_USER, else the login name."""
    return os.environ.get("TLPIPE_USER") or getpass.getuser()


def _stamp(client, name: str, version: str, action: str, reason: str, **extra: str) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tags = {f"{action}_by": whoami(), f"{action}_at": now, f"{action}_reason": reason, **extra}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def promote(
    client, name: str, version: str | int, reason: str, force: bool = False, gate_now: dict | None = None
) -> dict:
    """Move `@champion` to `version`; the old champion stays reachable as `@previous`.

    Args:
        client: the registry client.
        name: the registered model.
        version: number or `@alias`.
        reason: why (recorded on the version).
        force: promote although the gate failed (recorded as `promoted_forced`).
        gate_now: the gate re-run against the current champion ({"status", "reasons", "champion_version"});
            without it, the gate recorded at registration decides.

    Raises:
        PipelineError: no reason, or the gate did not pass and `force` is not set.
    """
    if not reason.strip():
        raise PipelineError('promote needs --reason "...": the registry records why a model went to production')
    target = get_version(client, name, version)
    if gate_now is None:
        status = target.tags.get("validation_status", "missing")
        why, against = target.tags.get("validation_reasons", "no gate result"), "at registration"
    else:
        status, why = gate_now["status"], " | ".join(gate_now["reasons"]) or "all thresholds met"
        against = (
            f"against the current champion v{gate_now['champion_version']}"
            if gate_now["champion_version"]
            else "with no champion"
        )
    if status != "passed" and not force:
        raise PipelineError(
            f"version {target.version} has validation_status={status} {against} ({why}); "
            'fix it, or force it with a reason: make promote VERSION=N REASON="..." FORCE=1 '
            "(python -m operators.registry promote N --reason ... --force)"
        )
    current = alias_version(client, name, CHAMPION)
    if current is not None and current.version == target.version:
        raise PipelineError(f"version {target.version} is already @champion")
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    client.set_registered_model_alias(name, CHAMPION, target.version)
    _stamp(
        client,
        name,
        target.version,
        "promoted",
        reason,
        promoted_forced=str(bool(force)).lower(),
        promoted_gate=f"{status} {against}: {why}"[:5000],
    )
    return {"champion": target.version, "previous": current.version if current else None, "status": status}


def rollback(client, name: str, reason: str) -> dict:
    """Point `@champion` back at `@previous`; the demoted version is tagged with who, when and why."""
    if not reason.strip():
        raise PipelineError('rollback needs --reason "..."')
    previous = alias_version(client, name, PREVIOUS)
    if previous is None:
        raise PipelineError(f"model {name!r} has no @previous version to roll back to")
    current = alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.delete_registered_model_alias(name, PREVIOUS)
    if current is not None:
        _stamp(client, name, current.version, "rolled_back", reason)
    _stamp(client, name, previous.version, "restored", reason)
    return {"champion": previous.version, "demoted": current.version if current else None}


def aliases(client, name: str) -> dict[str, list[str]]:
    """Version -> its `@aliases` (search results do not carry aliases; the registered model does)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    out: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        out.setdefault(str(version), []).append(f"@{alias}")
    return out


def _rounded(text: str) -> str:
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return text


def status_rows(client, name: str) -> list[dict]:
    """Every version, newest first, with its aliases, gate status and test accuracy."""
    versions = client.search_model_versions(f"name = '{name}'")
    by_version = aliases(client, name)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append(
            {
                "version": v.version,
                "aliases": ",".join(by_version.get(str(v.version), [])) or "-",
                "validation_status": v.tags.get("validation_status", "-"),
                "test_accuracy": v.tags.get("test_accuracy", "-"),
                # accuracies on different test sets are not comparable: the column says which set
                "test_set": v.tags.get("test_set_sha256", "-")[:10],
                "backbone": v.tags.get("backbone", "-")[:19],
                "freeze_ratio": _rounded(v.tags.get("freeze_ratio", "-")),
                "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.creation_timestamp / 1000)),
            }
        )
    return rows


def load_version_model(client, name: str, version):
    """The Keras model of a registry version and its class names (from the version's `classes` tag)."""
    import tlpipe.data.augmentation  # noqa: F401 - registers the custom augmentation layer for deserialization
    from tlpipe.tracking.serving import keras_model

    classes = json.loads(version.tags.get("classes", "[]"))
    if not classes:
        raise PipelineError(f"version {version.version} of {name!r} has no classes tag; register it with tlpipe")
    return keras_model(f"models:/{name}/{version.version}"), classes


def existing_version(client, name: str, run_id: str):
    """The version already registered from this training run, if any (re-running register reuses it)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get("training_run_id") == run_id:
            return version
    return None


def evidence_file(client, version, name: str, work: Path) -> Path | None:
    """One file of a version's registration evidence, downloaded under `work`; None when it has none.

    A version registered by an older tlpipe may lack a file (or the register run): callers then go without it.
    """
    from mlflow.exceptions import MlflowException

    from tlpipe.contracts.evidence import EVIDENCE

    run_id = version.tags.get("register_run_id")
    if not run_id:
        return None
    work.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, f"{EVIDENCE}/{name}", str(work)))
    except (MlflowException, OSError):
        return None
