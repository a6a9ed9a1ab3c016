"""Shared helpers of the infra checks: external tools, rendered Kustomize overlays, checkov reports.

Tools: kubectl on PATH; checkov from $CHECKOV_BIN or PATH (it lives in its own venv, see
infra/requirements-tools.txt); hadolint from $HADOLINT_BIN or PATH.

The prod overlay needs overlays/prod/prod.env (git-ignored, the operator's own values), so overlays are
rendered from a copy of infra/k8s with a prod.env written here: PROD_ENV, its bucket TEST_BUCKET.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "infra" / "k8s"
TF_DIR = REPO / "infra" / "terraform"
DOCKERFILE = REPO / "Dockerfile"
OVERLAYS = ("dev", "prod")
NAMESPACE = "tlpipe"
TEST_BUCKET = "acme-tlpipe-mlflow-artifacts"
PROD_ENV = {
    "MLFLOW_ARTIFACTS_BUCKET": TEST_BUCKET,
    "AWS_DEFAULT_REGION": "eu-west-1",
    "MLFLOW_S3_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


def tool(name: str, env_var: str | None = None) -> str:
    """Path of an external tool: $env_var, else PATH, else the venv's bin; fails if absent."""
    if env_var and os.environ.get(env_var):
        path = os.environ[env_var]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"${env_var}={path!r} is not an executable file")
        return path
    # Console scripts of packages in the running venv (e.g. hadolint-bin) live next to its interpreter
    # even when the venv is not activated.
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        hint = f" (or set ${env_var})" if env_var else ""
        pytest.fail(f"required tool {name!r} not found on PATH or next to {sys.executable}{hint}")
    return path


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)


def k8s_copy(prod_env: dict[str, str] | None = None) -> Path:
    """A throwaway copy of infra/k8s with overlays/prod/prod.env holding `prod_env` (default PROD_ENV)."""
    root = Path(tempfile.mkdtemp(prefix="tlpipe-k8s-"))
    atexit.register(shutil.rmtree, root, True)
    shutil.copytree(K8S_DIR, root / "k8s", ignore=shutil.ignore_patterns("prod.env"))
    lines = [f"{k}={v}" for k, v in (PROD_ENV if prod_env is None else prod_env).items()]
    (root / "k8s" / "overlays" / "prod" / "prod.env").write_text("\n".join(lines) + "\n")
    return root / "k8s"


@functools.cache
def _default_copy() -> Path:
    return k8s_copy()


def render_text(path: str, k8s: Path | None = None) -> str:
    """`kubectl kustomize` of infra/k8s/<path> (in a copy with prod.env)."""
    proc = run([tool("kubectl"), "kustomize", str((k8s or _default_copy()) / path)])
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return proc.stdout


@functools.cache
def _render_cached(path: str) -> str:
    return render_text(path)


def render(overlay: str) -> list[dict]:
    """The objects of infra/k8s/overlays/<overlay>."""
    return [doc for doc in yaml.safe_load_all(_render_cached(f"overlays/{overlay}")) if doc]


def find(objs: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def find_prefixed(objs: list[dict], kind: str, prefix: str) -> dict:
    """ConfigMaps carry a kustomize hash suffix: match on '<prefix>-<hash>'."""
    pattern = re.escape(prefix) + r"(-[a-z0-9]+)?"
    matches = [o for o in objs if o["kind"] == kind and re.fullmatch(pattern, o["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} named {prefix}[-hash], found {len(matches)}"
    return matches[0]


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def containers(obj: dict | None):
    assert obj is not None, "no such object in the rendered manifests"
    spec = pod_spec(obj)
    yield from spec.get("initContainers", []) + spec.get("containers", [])


def workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def checkov(target: Path, framework: str) -> list[dict]:
    cmd = [
        tool("checkov", "CHECKOV_BIN"),
        "--directory" if target.is_dir() else "--file",
        str(target),
        "--framework",
        framework,
        "--output",
        "json",
        "--skip-download",
    ]
    proc = run(cmd)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov produced no JSON report (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return report if isinstance(report, list) else [report]


def assert_checkov_clean(reports: list[dict], framework: str, min_resources: int) -> None:
    report = next((r for r in reports if r.get("check_type") == framework), None)
    assert report is not None, f"checkov returned no {framework} results: {reports!r:.2000}"
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse some files: {summary}"
    assert summary["resource_count"] >= min_resources, f"checkov scanned too little: {summary}"
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    # Suppressions are allowed only in place and with a reason.
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in report["results"]["skipped_checks"]
        if not (c.get("check_result", {}).get("suppress_comment") or "").strip()
    ]
    assert not unexplained, "checkov suppressions without a reason:\n" + "\n".join(unexplained)
