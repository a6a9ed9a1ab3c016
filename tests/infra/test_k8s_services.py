"""The services in namespace tlpipe (infra/k8s overlays dev and prod): schema, hardening, Secrets, MinIO.

Renders both overlays with kubectl, validates every object against the Kubernetes JSON schemas
(kubernetes-validate), checks the hardening rules and runs checkov on the rendered objects.
"""

from __future__ import annotations

import base64
import re

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from tests.infra.infra_tools import (
    LONG_RUNNING_KINDS,
    NAMESPACE,
    OVERLAYS,
    assert_checkov_clean,
    checkov,
    containers,
    find,
    find_prefixed,
    pod_spec,
    render,
    render_text,
    workloads,
)

pytestmark = pytest.mark.infra

# Kubernetes version the manifests are validated against (kubernetes-validate ships schemas for it; the
# kubectl used here is 1.32 as well).
K8S_VERSION = "1.32.0"
REQUIRED_SECRETS = {  # Secret name -> keys
    "s3-credentials": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "mlflow-db": {"PGUSER", "PGPASSWORD"},
    "optuna-db": {"PGUSER", "PGPASSWORD"},
}
PLACEHOLDERS = {"", "REPLACE_ME"}
MINIO_BUCKETS = {"pipeline-root", "mlflow-artifacts", "datasets", "dvc"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_tlpipe(overlay):
    objs = render(overlay)
    assert objs, f"overlay {overlay} rendered no objects"
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            assert meta["name"] == NAMESPACE
        else:
            assert meta.get("namespace") == NAMESPACE, f"{obj['kind']}/{meta['name']} not in {NAMESPACE}"


def test_validation_version_is_shipped():
    versions = kubernetes_validate.utils.all_versions()
    assert K8S_VERSION in versions, f"kubernetes-validate has no schemas for {K8S_VERSION}: {versions[-5:]}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_match_kubernetes_schema(overlay):
    errors = []
    for obj in render(overlay):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert not errors, "schema validation errors:\n" + "\n".join(errors)


def _hardening_problems(obj: dict) -> list[str]:
    spec = pod_spec(obj)
    pod_sc = spec.get("securityContext", {})
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    problems = (
        []
        if spec.get("automountServiceAccountToken") is False
        else [f"{where}: automountServiceAccountToken must be false"]
    )
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in containers(obj):
        cw, sc, res = f"{where} container {c['name']}", c.get("securityContext", {}), c.get("resources", {})
        problems += [
            f"{cw}: missing resources.{section}.{key}"
            for section in ("requests", "limits")
            for key in ("cpu", "memory")
            if key not in res.get(section, {})
        ]
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        checks = {
            f"image {image!r} is not pinned": "@sha256:" in image or (tag and tag != "latest"),
            "runAsNonRoot is not true": sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")),
            "runAsUser must be a non-zero UID": sc.get("runAsUser", pod_sc.get("runAsUser")) not in (None, 0),
            "allowPrivilegeEscalation must be false": sc.get("allowPrivilegeEscalation") is False,
            "readOnlyRootFilesystem must be true": sc.get("readOnlyRootFilesystem") is True,
            "capabilities.drop must contain ALL": "ALL" in sc.get("capabilities", {}).get("drop", []),
            "adds capabilities": not sc.get("capabilities", {}).get("add"),
            "seccompProfile must be RuntimeDefault": sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get(
                "type"
            )
            == "RuntimeDefault",
        }
        problems += [f"{cw}: {msg}" for msg, ok in checks.items() if not ok]
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{cw}: read-only root needs an emptyDir mounted at /tmp")
        if obj["kind"] in LONG_RUNNING_KINDS:
            problems += [f"{cw}: missing {p}" for p in ("livenessProbe", "readinessProbe") if p not in c]
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened(overlay):
    objs = workloads(render(overlay))
    assert objs, "no workloads rendered"
    problems = [p for obj in objs for p in _hardening_problems(obj)]
    assert not problems, "\n".join(problems)


def test_minio_only_in_dev():
    dev, prod = render("dev"), render("prod")
    assert find(dev, "StatefulSet", "minio") is not None and find(dev, "Service", "minio") is not None
    job = find(dev, "Job", "minio-create-buckets")
    assert job is not None, "dev overlay lacks the bucket-creation Job"
    script = " ".join(" ".join(c.get("command", []) + c.get("args", [])) for c in containers(job))
    missing = {b for b in MINIO_BUCKETS if not re.search(rf"\b{re.escape(b)}\b", script)}
    assert not missing, f"bucket Job does not create {sorted(missing)}"
    np = find(dev, "NetworkPolicy", "allow-minio-from-clients")
    assert np is not None and np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "minio"}
    leaked = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in prod
        if "minio" in o["metadata"]["name"]
        or (o["kind"] in LONG_RUNNING_KINDS | {"Job"} and any("minio" in c["image"] for c in containers(o)))
    ]
    assert not leaked, f"prod overlay must not contain MinIO: {leaked}"
    assert find_prefixed(dev, "ConfigMap", "mlflow-config")["data"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    prod_endpoint = find_prefixed(prod, "ConfigMap", "mlflow-config")["data"]["MLFLOW_S3_ENDPOINT_URL"]
    assert prod_endpoint.startswith("https://") and "minio" not in prod_endpoint


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_hold_placeholders_only(overlay):
    secrets = {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == "Secret"}
    for name in REQUIRED_SECRETS:
        assert name in secrets, f"Secret {name!r} missing from {overlay}"
    for name, secret in secrets.items():
        values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        values.update(secret.get("stringData", {}))
        if name in REQUIRED_SECRETS:
            assert set(values) == REQUIRED_SECRETS[name], f"Secret {name} keys: {sorted(values)}"
        real = sorted(k for k, v in values.items() if v.strip() not in PLACEHOLDERS)
        assert not real, f"Secret {name} has non-placeholder values for {real}"


def test_checkov_kubernetes(tmp_path):
    for overlay in OVERLAYS:
        (tmp_path / overlay).mkdir()
        (tmp_path / overlay / "rendered.yaml").write_text(render_text(f"overlays/{overlay}"))
    # Applied with `-n <profile namespace>`, as pipelines/README.md says; checkov sees it that way.
    launcher = [d for d in yaml.safe_load_all(render_text("overlays/dev/pipeline-namespace")) if d]
    for obj in launcher:
        obj["metadata"]["namespace"] = "kubeflow-user-example-com"
    (tmp_path / "pipeline-namespace").mkdir()
    (tmp_path / "pipeline-namespace" / "rendered.yaml").write_text(yaml.safe_dump_all(launcher))
    assert_checkov_clean(checkov(tmp_path, "kubernetes"), "kubernetes", min_resources=20)
