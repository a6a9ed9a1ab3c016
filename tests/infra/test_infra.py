"""Static checks of infra/ and the Dockerfile.

Renders both Kustomize overlays with kubectl, validates every object against the
Kubernetes JSON schemas (kubernetes-validate), checks the hardening rules on the
rendered objects, scans infra/k8s (rendered), infra/terraform and the Dockerfile with
checkov, lints the Dockerfile with hadolint and checks its layout.

Tools: kubectl on PATH; checkov from $CHECKOV_BIN or PATH (it lives in its own
venv, see infra/requirements-tools.txt); hadolint from $HADOLINT_BIN or PATH.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "infra" / "k8s"
TF_DIR = REPO / "infra" / "terraform"
DOCKERFILE = REPO / "Dockerfile"
OVERLAYS = ("dev", "prod")
NAMESPACE = "tlpipe"

# Kubernetes version the manifests are validated against (kubernetes-validate
# ships schemas for it; the kubectl used here is 1.32 as well).
K8S_VERSION = "1.32.0"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}

# Secret name -> keys; pipeline tasks mount these by name (use_secret_as_env).
REQUIRED_SECRETS = {
    "s3-credentials": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "mlflow-db": {"PGUSER", "PGPASSWORD"},
    "optuna-db": {"PGUSER", "PGPASSWORD"},
}
PLACEHOLDERS = {"", "REPLACE_ME"}
MINIO_BUCKETS = {"pipeline-root", "mlflow-artifacts", "datasets", "dvc"}


# --------------------------------------------------------------------------- tools


def _tool(name: str, env_var: str | None = None) -> str:
    """Path of an external tool: $env_var, else PATH, else the venv's bin; fails if absent."""
    if env_var and os.environ.get(env_var):
        path = os.environ[env_var]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"${env_var}={path!r} is not an executable file")
        return path
    path = shutil.which(name)
    if path is None:
        # Console scripts of packages in the running venv (e.g. hadolint-bin) live
        # next to its interpreter even when the venv is not activated.
        path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        hint = f" (or set ${env_var})" if env_var else ""
        pytest.fail(f"required tool {name!r} not found on PATH or next to {sys.executable}{hint}")
    return path


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


@functools.cache
def _render_text(overlay: str) -> str:
    kubectl = _tool("kubectl")
    proc = _run([kubectl, "kustomize", str(K8S_DIR / "overlays" / overlay)])
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    return proc.stdout


def _render(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_render_text(overlay)) if doc]


def _find(objs: list[dict], kind: str, name: str) -> dict | None:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    return None


def _find_prefixed(objs: list[dict], kind: str, prefix: str) -> dict:
    """ConfigMaps carry a kustomize hash suffix: match on '<prefix>-<hash>'."""
    matches = [
        o
        for o in objs
        if o["kind"] == kind and re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]+)?", o["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected one {kind} named {prefix}[-hash], found {len(matches)}"
    return matches[0]


def _pod_spec(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _containers(obj: dict):
    spec = _pod_spec(obj)
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        yield spec, c


def _workloads(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def _checkov(target: Path, framework: str) -> list[dict]:
    checkov = _tool("checkov", "CHECKOV_BIN")
    proc = _run(
        [
            checkov,
            "--directory" if target.is_dir() else "--file",
            str(target),
            "--framework",
            framework,
            "--output",
            "json",
            "--skip-download",
        ]
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov produced no JSON report (rc={proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return report if isinstance(report, list) else [report]


def _assert_checkov_clean(reports: list[dict], framework: str, min_resources: int) -> None:
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


# ------------------------------------------------------------------- kustomize


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay):
    objs = _render(overlay)
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
    for obj in _render(overlay):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert not errors, "schema validation errors:\n" + "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened(overlay):
    problems = []
    workloads = _workloads(_render(overlay))
    assert workloads, "no workloads rendered"
    for obj in workloads:
        spec = _pod_spec(obj)
        pod_sc = spec.get("securityContext", {})
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for _, c in _containers(obj):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})

            res = c.get("resources", {})
            for section in ("requests", "limits"):
                for key in ("cpu", "memory"):
                    if key not in res.get(section, {}):
                        problems.append(f"{cw}: missing resources.{section}.{key}")

            image = c.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if "@sha256:" not in image and (not tag or tag == "latest"):
                problems.append(f"{cw}: image {image!r} is not pinned")

            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                problems.append(f"{cw}: runAsNonRoot is not true")
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if not isinstance(uid, int) or uid == 0:
                problems.append(f"{cw}: runAsUser must be a non-zero UID, got {uid!r}")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{cw}: capabilities.drop must contain ALL")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{cw}: adds capabilities")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{cw}: seccompProfile must be RuntimeDefault")

            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                problems.append(f"{cw}: read-only root needs an emptyDir mounted at /tmp")

            if obj["kind"] in LONG_RUNNING_KINDS:
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append(f"{cw}: missing {probe}")
    assert not problems, "\n".join(problems)


def test_minio_only_in_dev():
    dev, prod = _render("dev"), _render("prod")

    assert _find(dev, "StatefulSet", "minio") is not None
    assert _find(dev, "Service", "minio") is not None
    job = _find(dev, "Job", "minio-create-buckets")
    assert job is not None, "dev overlay lacks the bucket-creation Job"
    script = " ".join(" ".join(c.get("command", []) + c.get("args", [])) for _, c in _containers(job))
    missing = {b for b in MINIO_BUCKETS if not re.search(rf"\b{re.escape(b)}\b", script)}
    assert not missing, f"bucket Job does not create {sorted(missing)}"
    np = _find(dev, "NetworkPolicy", "allow-minio-from-clients")
    assert np is not None and np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "minio"}

    leaked = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in prod
        if "minio" in o["metadata"]["name"]
        or (o["kind"] in WORKLOAD_KINDS and any("minio" in c["image"] for _, c in _containers(o)))
    ]
    assert not leaked, f"prod overlay must not contain MinIO: {leaked}"

    dev_cfg = _find_prefixed(dev, "ConfigMap", "mlflow-config")["data"]
    prod_cfg = _find_prefixed(prod, "ConfigMap", "mlflow-config")["data"]
    assert dev_cfg["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert prod_cfg["MLFLOW_S3_ENDPOINT_URL"].startswith("https://")
    assert "minio" not in prod_cfg["MLFLOW_S3_ENDPOINT_URL"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_hold_placeholders_only(overlay):
    secrets = {o["metadata"]["name"]: o for o in _render(overlay) if o["kind"] == "Secret"}
    for name in REQUIRED_SECRETS:
        assert name in secrets, f"Secret {name!r} missing from {overlay}"
    for name, secret in secrets.items():
        values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        values.update(secret.get("stringData", {}))
        if name in REQUIRED_SECRETS:
            assert set(values) == REQUIRED_SECRETS[name], f"Secret {name} keys: {sorted(values)}"
        real = sorted(k for k, v in values.items() if v.strip() not in PLACEHOLDERS)
        assert not real, f"Secret {name} has non-placeholder values for {real}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_tracking_server(overlay):
    objs = _render(overlay)
    deploy = _find(objs, "Deployment", "mlflow")
    assert deploy is not None
    svc = _find(objs, "Service", "mlflow")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 5000
    ((_, c),) = list(_containers(deploy))
    assert re.fullmatch(r"ghcr\.io/mlflow/mlflow:v\d+\.\d+\.\d+(-full)?", c["image"]), c["image"]
    argv = c.get("command", []) + c.get("args", [])
    assert argv[:2] == ["mlflow", "server"], argv

    def flag(name):
        assert name in argv, f"mlflow server lacks {name}"
        return argv[argv.index(name) + 1]

    backend = flag("--backend-store-uri")
    assert backend.startswith("postgresql") and backend.endswith("/mlflow")
    assert "@" not in backend, "credentials must come from the Secret, not the URI"
    assert flag("--artifacts-destination") == "s3://mlflow-artifacts/"
    assert flag("--host") == "0.0.0.0"
    assert "--serve-artifacts" in argv

    env = {e["name"]: e for e in c.get("env", [])}
    for var in ("PGUSER", "PGPASSWORD"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": var}
    cfg_refs = [r["configMapRef"]["name"] for r in c.get("envFrom", []) if "configMapRef" in r]
    cfg = _find_prefixed(objs, "ConfigMap", "mlflow-config")
    assert cfg["metadata"]["name"] in cfg_refs
    assert "MLFLOW_S3_ENDPOINT_URL" in cfg["data"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"

    pdb = _find(objs, "PodDisruptionBudget", "mlflow")
    if overlay == "prod":
        assert deploy["spec"]["replicas"] == 2
        assert pdb is not None
        pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    else:
        assert deploy["spec"]["replicas"] == 1
        assert pdb is None


def test_prod_resources_exceed_dev():
    def mem_limit(objs, kind, name):
        ((_, c),) = list(_containers(_find(objs, kind, name)))
        qty = c["resources"]["limits"]["memory"]
        units = {"Mi": 2**20, "Gi": 2**30}
        return int(qty[:-2]) * units[qty[-2:]]

    dev, prod = _render("dev"), _render("prod")
    for kind, name in (("Deployment", "mlflow"), ("StatefulSet", "postgres")):
        assert mem_limit(prod, kind, name) > mem_limit(dev, kind, name), f"{kind}/{name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_holds_mlflow_and_optuna_databases(overlay):
    objs = _render(overlay)
    sts = _find(objs, "StatefulSet", "postgres")
    assert sts is not None and sts["spec"]["volumeClaimTemplates"], "postgres needs a PVC"
    ((_, c),) = list(_containers(sts))
    assert re.fullmatch(r"docker\.io/library/postgres:15\.\d+(-\w+)?", c["image"]), c["image"]
    svc = _find(objs, "Service", "postgres")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 5432

    init = _find_prefixed(objs, "ConfigMap", "postgres-init")
    volumes = {v["name"]: v for v in _pod_spec(sts)["volumes"]}
    mounted = [m for m in c["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d"]
    assert mounted and volumes[mounted[0]["name"]]["configMap"]["name"] == init["metadata"]["name"]
    script = "\n".join(init["data"].values())
    for db in ("mlflow", "optuna"):
        assert re.search(rf"^create_db {db} ", script, re.M), f"init script does not create {db}"
    assert 'CREATE DATABASE :"db"' in script

    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert refs["MLFLOW_DB_USER"] == {"name": "mlflow-db", "key": "PGUSER"}
    assert refs["MLFLOW_DB_PASSWORD"] == {"name": "mlflow-db", "key": "PGPASSWORD"}
    assert refs["OPTUNA_DB_USER"] == {"name": "optuna-db", "key": "PGUSER"}
    assert refs["OPTUNA_DB_PASSWORD"] == {"name": "optuna-db", "key": "PGPASSWORD"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_study_creator_job(overlay):
    objs = _render(overlay)
    job = _find(objs, "Job", "optuna-study-creator")
    assert job is not None
    ((_, c),) = list(_containers(job))
    assert c["image"] == "ghcr.io/tlpipe/tlpipe:0.1.0"
    assert c["args"][:2] == ["components.tune", "create-study"]
    assert c["args"][2:] == ["--storage", "$(OPTUNA_STORAGE_URL)"]
    assert "command" not in c, "the image ENTRYPOINT (python -m) must be kept"
    env = {e["name"]: e for e in c["env"]}
    for var in ("PGUSER", "PGPASSWORD"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "optuna-db", "key": var}
    cfg = _find_prefixed(objs, "ConfigMap", "optuna-config")
    assert cfg["metadata"]["name"] in [r["configMapRef"]["name"] for r in c["envFrom"]]
    url = cfg["data"]["OPTUNA_STORAGE_URL"]
    assert url.startswith("postgresql") and url.endswith("/optuna") and "@" not in url


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay):
    objs = _render(overlay)
    policies = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "NetworkPolicy"}
    deny = policies.get("default-deny-ingress")
    assert deny is not None and deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny

    def sources(spec):
        return [peer for rule in spec.get("ingress", []) for peer in rule.get("from", [])]

    def allows(spec, app):
        return any(
            p.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": app}
            and "namespaceSelector" not in p
            for p in sources(spec)
        )

    def allows_pipelines(spec):
        return any(
            p.get("podSelector", {}).get("matchLabels") == {"tlpipe.io/role": "pipeline"}
            for p in sources(spec)
        )

    mlflow = policies["allow-mlflow-from-pipelines"]
    assert allows_pipelines(mlflow)
    postgres = policies["allow-postgres-from-clients"]
    assert allows_pipelines(postgres)
    assert allows(postgres, "mlflow") and allows(postgres, "optuna-study-creator")
    assert [p["port"] for r in postgres["ingress"] for p in r["ports"]] == [5432]

    # Every pod that serves traffic is selected by an allow rule.
    selected = {tuple(sorted(s["podSelector"].get("matchLabels", {}).items())) for s in policies.values()}
    for obj in objs:
        if obj["kind"] in LONG_RUNNING_KINDS:
            labels = obj["spec"]["template"]["metadata"]["labels"]
            app = ("app.kubernetes.io/name", labels["app.kubernetes.io/name"])
            assert (app,) in selected, f"no NetworkPolicy admits traffic to {obj['metadata']['name']}"


# ----------------------------------------------------------------------- checkov


def test_checkov_kubernetes(tmp_path):
    for overlay in OVERLAYS:
        out = tmp_path / overlay
        out.mkdir()
        (out / "rendered.yaml").write_text(_render_text(overlay))
    reports = _checkov(tmp_path, "kubernetes")
    _assert_checkov_clean(reports, "kubernetes", min_resources=20)


def test_checkov_terraform():
    reports = _checkov(TF_DIR, "terraform")
    _assert_checkov_clean(reports, "terraform", min_resources=2)


def test_checkov_dockerfile():
    reports = _checkov(DOCKERFILE, "dockerfile")
    _assert_checkov_clean(reports, "dockerfile", min_resources=1)


# --------------------------------------------------------------------- terraform


def _blocks(text: str, header: str) -> dict[str, str]:
    """Top-level `header "name" { ... }` blocks of a terraform fmt-formatted file."""
    return dict(re.findall(rf'^{header} "([^"]+)" \{{\n(.*?)^\}}', text, re.M | re.S))


@pytest.mark.parametrize(
    "module,resource",
    [
        ("gke", "google_container_node_pool"),
        ("eks", "aws_eks_node_group"),
    ],
)
def test_terraform_gpu_pool(module, resource):
    mod = TF_DIR / module
    for name in ("versions.tf", "variables.tf", "main.tf", "outputs.tf"):
        assert (mod / name).is_file(), f"{module}/{name} missing"

    versions = (mod / "versions.tf").read_text()
    assert re.search(r"required_version\s*=", versions)
    pins = re.findall(r'version\s*=\s*"([^"]+)"', versions)
    assert pins and all(re.search(r"\d+\.\d+", p) for p in pins), pins

    variables = _blocks((mod / "variables.tf").read_text(), "variable")
    assert variables
    for name, body in variables.items():
        assert re.search(r"^\s+type\s*=", body, re.M), f"variable {name} has no type"
        assert re.search(r'^\s+description\s*=\s*"\S', body, re.M), f"variable {name} has no description"

    outputs = _blocks((mod / "outputs.tf").read_text(), "output")
    assert outputs and all("description" in b for b in outputs.values())

    main = (mod / "main.tf").read_text()
    block = re.search(rf'^resource "{resource}" "\w+" \{{\n(.*?)^\}}', main, re.M | re.S)
    assert block, f"{module}/main.tf has no {resource}"
    text = block.group(1)
    taint = re.search(r"taint \{(.*?)\}", text, re.S)
    assert taint, "GPU pool has no taint"
    assert re.search(r'key\s*=\s*"nvidia\.com/gpu"', taint.group(1))
    assert re.search(r'value\s*=\s*"present"', taint.group(1))
    assert re.search(r'effect\s*=\s*"NO_SCHEDULE"', taint.group(1))
    assert re.search(r'"tlpipe\.io/pool"\s*=\s*"gpu"', text)
    assert re.search(r"\b(min_node_count|min_size)\s*=\s*0\b", text), "autoscaling must start at 0"
    assert re.search(r"\b(max_node_count|max_size)\s*=\s*var\.", text), "max must be configurable"


# ------------------------------------------------------------------------ docker


def test_hadolint_dockerfile():
    hadolint = _tool("hadolint", "HADOLINT_BIN")
    proc = _run([hadolint, str(DOCKERFILE)], cwd=REPO)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_layout():
    text = DOCKERFILE.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    for line in (ln for ln in lines if ln.startswith("FROM ")):
        image = line.split()[1]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"unpinned base {image}"

    assert args.get("VARIANT") == "cpu", "VARIANT build arg (cpu|gpu) must default to cpu"
    assert "tensorflow[and-cuda]==" in text

    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "final stage must run as non-root"
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    assert any(ln.startswith("USER ") for ln in lines[last_from:]), "USER must be set in the final stage"
    assert 'ENTRYPOINT ["python", "-m"]' in lines

    order = [i for i, ln in enumerate(lines) if ln.startswith("COPY ") and "--from" not in ln]
    copies = [lines[i] for i in order]
    lock_idx = next(i for i, ln in enumerate(copies) if "requirements.lock" in ln)
    comp_idx = next(i for i, ln in enumerate(copies) if "components/" in ln)
    assert lock_idx < comp_idx, "requirements.lock must be copied (and installed) before the sources"
    assert re.search(r"pip install --no-cache-dir -r requirements\.lock", text)
    assert re.search(r"pip install --no-cache-dir --no-deps \.", text)

    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", text, re.M | re.I), (
        "no credentials in the image"
    )

    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore and "*" in ignore, ".dockerignore should exclude everything by default"
    for needed in (
        "requirements.lock",
        "pyproject.toml",
        "params.yaml",
        "dvc.yaml",
        "components/",
        "pipelines/",
    ):
        assert f"!{needed}" in ignore, f".dockerignore does not re-include {needed}"
