"""The stores in namespace tlpipe: MLflow (artifact bucket from the overlay) and PostgreSQL (databases, connections)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.infra.infra_tools import (
    OVERLAYS,
    REPO,
    TEST_BUCKET,
    containers,
    find,
    find_prefixed,
    k8s_copy,
    pod_spec,
    render,
    render_text,
)

pytestmark = pytest.mark.infra

PLACEHOLDERS = {"", "REPLACE_ME"}
S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_TUNING_WORKERS = 16  # infra/README.md, "PostgreSQL connections"
SPARE_CONNECTIONS = 10  # psql sessions, migrations, probes


def _mlflow(objs: list[dict]) -> tuple[dict, dict, list[str], dict]:
    deploy = find(objs, "Deployment", "mlflow")
    assert deploy is not None
    (c,) = list(containers(deploy))
    return deploy, c, c.get("command", []) + c.get("args", []), find_prefixed(objs, "ConfigMap", "mlflow-config")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_tracking_server(overlay):
    objs = render(overlay)
    deploy, c, argv, cfg = _mlflow(objs)
    svc = find(objs, "Service", "mlflow")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 5000
    assert re.fullmatch(r"ghcr\.io/mlflow/mlflow:v\d+\.\d+\.\d+(-full)?", c["image"]), c["image"]
    assert argv[:2] == ["mlflow", "server"], argv

    def flag(name):
        assert name in argv, f"mlflow server lacks {name}"
        return argv[argv.index(name) + 1]

    backend = flag("--backend-store-uri")
    assert backend.startswith("postgresql") and backend.endswith("/mlflow")
    assert "@" not in backend, "credentials must come from the Secret, not the URI"
    # The bucket is the overlay's (kubelet expands the variable from mlflow-config).
    assert flag("--artifacts-destination") == "s3://$(MLFLOW_ARTIFACTS_BUCKET)/"
    bucket = cfg["data"]["MLFLOW_ARTIFACTS_BUCKET"]
    assert S3_BUCKET_NAME.fullmatch(bucket), bucket
    assert bucket == ("mlflow-artifacts" if overlay == "dev" else TEST_BUCKET)
    assert flag("--host") == "0.0.0.0" and "--serve-artifacts" in argv

    env = {e["name"]: e for e in c.get("env", [])}
    for var in ("PGUSER", "PGPASSWORD"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": var}
    assert cfg["metadata"]["name"] in [r["configMapRef"]["name"] for r in c.get("envFrom", []) if "configMapRef" in r]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    pdb = find(objs, "PodDisruptionBudget", "mlflow")
    if overlay == "prod":
        assert deploy["spec"]["replicas"] == 2 and pdb is not None
        pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    else:
        assert deploy["spec"]["replicas"] == 1 and pdb is None


def test_prod_bucket_comes_from_prod_env():
    k8s = k8s_copy(
        {
            "MLFLOW_ARTIFACTS_BUCKET": "other-org-artifacts",
            "AWS_DEFAULT_REGION": "ap-south-1",
            "MLFLOW_S3_ENDPOINT_URL": "https://s3.ap-south-1.amazonaws.com",
        }
    )
    objs = [d for d in yaml.safe_load_all(render_text("overlays/prod", k8s)) if d]
    data = _mlflow(objs)[3]["data"]
    assert (data["MLFLOW_ARTIFACTS_BUCKET"], data["AWS_DEFAULT_REGION"]) == ("other-org-artifacts", "ap-south-1")
    prod = REPO / "infra" / "k8s" / "overlays" / "prod"
    example = dict(
        line.split("=", 1)
        for line in (prod / "prod.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) == set(data) - {
        "MLFLOW_SERVER_ALLOWED_HOSTS",
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE",
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW",
    }
    assert example["MLFLOW_ARTIFACTS_BUCKET"] in PLACEHOLDERS, "the example must not name a real bucket"
    assert "prod.env" in (prod / ".gitignore").read_text().split(), "prod.env must stay out of git"


def test_prod_resources_exceed_dev():
    def mem_limit(objs, kind, name):
        (c,) = list(containers(find(objs, kind, name)))
        qty = c["resources"]["limits"]["memory"]
        return int(qty[:-2]) * {"Mi": 2**20, "Gi": 2**30}[qty[-2:]]

    dev, prod = render("dev"), render("prod")
    for kind, name in (("Deployment", "mlflow"), ("StatefulSet", "postgres")):
        assert mem_limit(prod, kind, name) > mem_limit(dev, kind, name), f"{kind}/{name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_holds_mlflow_and_optuna_databases(overlay):
    objs = render(overlay)
    sts = find(objs, "StatefulSet", "postgres")
    assert sts is not None and sts["spec"]["volumeClaimTemplates"], "postgres needs a PVC"
    (c,) = list(containers(sts))
    assert re.fullmatch(r"docker\.io/library/postgres:15\.\d+(-\w+)?", c["image"]), c["image"]
    svc = find(objs, "Service", "postgres")
    assert svc is not None and svc["spec"]["ports"][0]["port"] == 5432
    init = find_prefixed(objs, "ConfigMap", "postgres-init")
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    mounted = [m for m in c["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d"]
    assert mounted and volumes[mounted[0]["name"]]["configMap"]["name"] == init["metadata"]["name"]
    script = "\n".join(init["data"].values())
    for db in ("mlflow", "optuna"):
        assert re.search(rf"^create_db {db} ", script, re.M), f"init script does not create {db}"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    for role, secret in (("MLFLOW", "mlflow-db"), ("OPTUNA", "optuna-db")):
        assert refs[f"{role}_DB_USER"] == {"name": secret, "key": "PGUSER"}
        assert refs[f"{role}_DB_PASSWORD"] == {"name": secret, "key": "PGPASSWORD"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_connection_budget(overlay):
    """max_connections covers MAX_TUNING_WORKERS x tune.pool_size, the study task, MLflow's pools, spares."""
    objs = render(overlay)
    (pg,) = list(containers(find(objs, "StatefulSet", "postgres")))
    args = pg.get("args", [])
    settings = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-c")
    deploy, _, argv, cfg = _mlflow(objs)
    pool, overflow = (int(cfg["data"][f"MLFLOW_SQLALCHEMYSTORE_{k}"]) for k in ("POOL_SIZE", "MAX_OVERFLOW"))
    mlflow = deploy["spec"]["replicas"] * int(argv[argv.index("--workers") + 1]) * 2 * (pool + overflow)
    tune_pool = yaml.safe_load((REPO / "params.yaml").read_text())["tune"]["pool_size"]
    tuning = MAX_TUNING_WORKERS * tune_pool + tune_pool  # workers + create-study/summarize
    need = tuning + mlflow + int(settings["superuser_reserved_connections"]) + SPARE_CONNECTIONS
    assert need <= int(settings["max_connections"]), f"{overlay}: {need} connections > {settings}"
