"""The model registry as the source of truth for production: promote, rollback, status, predict.

    python -m components.registry status
    python -m components.registry promote VERSION --reason "why" [--force]
    python -m components.registry rollback --reason "why"
    python -m components.registry predict FOLDER [--version N | --alias champion] --out predictions.csv

Aliases: `@challenger` is the newest registered candidate (set by `register`), `@champion` the model in
production, `@previous` the champion before it (what `rollback` returns to). Every move is recorded on the
versions as tags: who, when and why.
"""

from __future__ import annotations

import csv
import getpass
import json
import os
import time
from pathlib import Path

import numpy as np

from components.cli import atomic_file, params_from, parser, run_main
from components.config import Params
from components.errors import PipelineError

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


def connect(params: Params):
    """An MlflowClient on the tracking URI, checked to answer (bounded retries), or a one-line error.

    MLflow's HTTP retries are capped from `registry.http_retries` / `registry.http_timeout` so a server that
    is down fails in seconds, before anything is written.
    """
    from components.tracking import tracking_uri

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(params.registry.http_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(params.registry.http_timeout)
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    try:
        client.search_registered_models(max_results=1)
    except Exception as exc:  # connection refused, timeouts, HTTP 5xx: the registry cannot be used now
        raise PipelineError(f"MLflow registry at {uri} did not answer after {params.registry.http_retries} "
                            f"retries ({str(exc).splitlines()[0][:200]}); start the server or set "
                            "MLFLOW_TRACKING_URI") from None
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


def promote(client, name: str, version: str | int, reason: str, force: bool = False) -> dict:
    """Move `@champion` to `version`; the old champion stays reachable as `@previous`.

    Raises:
        PipelineError: no reason, or the version's gate did not pass and `force` is not set.
    """
    if not reason.strip():
        raise PipelineError("promote needs --reason \"...\": the registry records why a model went to production")
    target = get_version(client, name, version)
    status = target.tags.get("validation_status", "missing")
    if status != "passed" and not force:
        raise PipelineError(f"version {target.version} has validation_status={status} "
                            f"({target.tags.get('validation_reasons', 'no gate result')}); "
                            "fix it, or pass --force with a --reason")
    current = alias_version(client, name, CHAMPION)
    if current is not None and current.version == target.version:
        raise PipelineError(f"version {target.version} is already @champion")
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    client.set_registered_model_alias(name, CHAMPION, target.version)
    _stamp(client, name, target.version, "promoted", reason, promoted_forced=str(bool(force)).lower())
    return {"champion": target.version, "previous": current.version if current else None}


def rollback(client, name: str, reason: str) -> dict:
    """Point `@champion` back at `@previous`; the demoted version is tagged with who, when and why."""
    if not reason.strip():
        raise PipelineError("rollback needs --reason \"...\"")
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


def status_rows(client, name: str) -> list[dict]:
    """Every version, newest first, with its aliases, gate status and test accuracy."""
    versions = client.search_model_versions(f"name = '{name}'")
    by_version = aliases(client, name)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        rows.append({"version": v.version, "aliases": ",".join(by_version.get(str(v.version), [])) or "-",
                     "validation_status": v.tags.get("validation_status", "-"),
                     "test_accuracy": v.tags.get("test_accuracy", "-"),
                     "backbone": v.tags.get("backbone", "-"), "freeze_ratio": v.tags.get("freeze_ratio", "-"),
                     "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.creation_timestamp / 1000))})
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(no versions)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def image_files(folder: Path) -> list[Path]:
    """The image files under a folder (recursive, sorted)."""
    from components.images import is_image_name

    if not folder.is_dir():
        raise PipelineError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))
    if not files:
        raise PipelineError(f"{folder}: no .jpg/.png images found")
    return files


def predict(model, classes: list[str], files: list[Path], max_pixels: int) -> list[dict]:
    """Class and confidence for each file, resized to the model's input size.

    Files go through the same checks and conversions as make_subset (CMYK, 16-bit, RGBA are converted;
    empty, corrupt or oversized files are not predicted): an unusable file gets a row with its reason.
    """
    import tempfile

    from components.datasets import decode_images
    from components.images import BadImage, normalise

    size = int(model.inputs[0].shape[1])
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        usable, reasons = {}, {}
        for i, path in enumerate(files):
            try:
                data, facts = normalise(path.read_bytes(), max_pixels)
            except BadImage as exc:
                reasons[i] = str(exc)
                continue
            usable[i] = Path(tmp) / f"{i}{facts.suffix}"
            usable[i].write_bytes(data)
        images = decode_images([str(p) for p in usable.values()], size, desc="predict")
        probs = {}
        if usable:
            probs = dict(zip(usable, np.asarray(model.predict(images.astype("float32"), verbose=0)), strict=True))
    rows = []
    for i, path in enumerate(files):
        p = probs.get(i)
        row = {"path": str(path), "predicted": "", "confidence": "", "error": reasons.get(i, "")}
        if p is not None:
            row.update(predicted=classes[int(p.argmax())], confidence=float(p.max()))
        row.update({f"p_{c}": float(p[k]) if p is not None else "" for k, c in enumerate(classes)})
        rows.append(row)
    return rows


def load_version_model(client, name: str, version):
    """The Keras model of a registry version and its class names (from the version's `classes` tag)."""
    import mlflow

    import components.augment  # noqa: F401 - registers the custom augmentation layer for deserialization

    classes = json.loads(version.tags.get("classes", "[]"))
    if not classes:
        raise PipelineError(f"version {version.version} of {name!r} has no classes tag; register it with tlpipe")
    model = mlflow.keras.load_model(f"models:/{name}/{version.version}")
    return model, classes


def main(argv: list[str] | None = None) -> None:
    """CLI: status, promote, rollback, predict."""
    p = parser("registry", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="versions with aliases, gate status and key metrics")
    pr = sub.add_parser("promote", help="make VERSION the @champion")
    pr.add_argument("version", help="version number or @alias (e.g. @challenger)")
    pr.add_argument("--reason", required=True)
    pr.add_argument("--force", action="store_true", help="promote even though the gate did not pass")
    rb = sub.add_parser("rollback", help="point @champion back at @previous")
    rb.add_argument("--reason", required=True)
    pd_ = sub.add_parser("predict", help="predict a folder of images with a registry version")
    pd_.add_argument("folder", type=Path)
    pd_.add_argument("--version", default=f"@{CHAMPION}", help="number or @alias (default: @champion)")
    pd_.add_argument("--out", type=Path, default=Path("predictions.csv"))
    args = p.parse_args(argv)
    params = params_from(args)
    name = params.registry.model_name
    if args.command == "predict":
        files = image_files(args.folder)  # bad input fails before the registry is contacted
    client = connect(params)
    if args.command == "status":
        print(f"model {name} at {client.tracking_uri}")
        print(format_table(status_rows(client, name)))
    elif args.command == "promote":
        done = promote(client, name, args.version, args.reason, args.force)
        print(f"registry: {name} @champion -> v{done['champion']}"
              + (f" (@previous = v{done['previous']})" if done["previous"] else ""))
    elif args.command == "rollback":
        done = rollback(client, name, args.reason)
        print(f"registry: {name} @champion -> v{done['champion']} (rolled back from v{done['demoted']})")
    else:
        version = get_version(client, name, args.version)
        model, classes = load_version_model(client, name, version)
        rows = predict(model, classes, files, params.make_subset.max_pixels)
        with atomic_file(args.out) as staged, open(staged, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        bad = sum(1 for r in rows if r["error"])
        print(f"registry: {len(rows) - bad} predictions by {name} v{version.version} -> {args.out}"
              + (f"; {bad} unusable files listed with their reason" if bad else ""))


if __name__ == "__main__":
    run_main(main)
