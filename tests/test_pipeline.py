"""The KFP pipeline: compiled IR (GPU pool, secrets, names, fan-out), submit, run-local; the DVC S3 remote."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from components.config import load_params
from pipelines import training_pipeline as tp
from pipelines.fingerprint import data_fingerprint
from pipelines.platform import GPU_STEPS, TUNE_STEPS
from pipelines.runtime import dotted, numeric_metrics
from tests.conftest import REPO, make_tree

STEPS = ("make_digits", "pretrain_backbone", "make_subset", "validate_data", "augment", "extract_features",
         "train_head", "tune create-study", "tune worker", "tune summarize", "fine_tune", "evaluate",
         "register")
PARAMS_FILE = str(REPO / "params.yaml")
PARAMS = load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline package as compiled by the CLI, with a non-default GPU pool label."""
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    tp.main(["--params", PARAMS_FILE, "compile", "--output", str(out), "--gpu-pool", "pool=a100",
             "--aws-endpoint-url", "http://minio.tlpipe.svc.cluster.local:9000",
             "--pipeline-root", "s3://pipeline-root/tlpipe"])
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():  # tasks inside the ParallelFor sub-DAG
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    by_step = {}
    for name, task in tasks.items():
        comp = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" in comp:
            label = comp["executorLabel"]
            by_step[task["taskInfo"]["name"]] = SimpleNamespace(
                name=name, task=task, container=spec["deploymentSpec"]["executors"][label]["container"],
                k8s=platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(label, {}))
    return SimpleNamespace(spec=spec, tasks=tasks, by_step=by_step, text=out.read_text())


def test_one_task_per_step_named_after_it(compiled):
    assert sorted(compiled.by_step) == sorted(STEPS)


def test_gpu_settings_exactly_on_gpu_tasks(compiled):
    for step, t in compiled.by_step.items():
        resources = t.container["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryLimit"], step
        if step in GPU_STEPS:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", step
            assert resources["accelerator"]["resourceCount"] == "1", step
            toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            assert t.k8s["tolerations"] == [toleration], step
            assert t.k8s["nodeSelector"]["labels"] == {"pool": "a100"}, step
            assert t.container["image"] == "ghcr.io/tlpipe/tlpipe:0.1.0-gpu"
        else:
            assert "accelerator" not in resources, step
            assert "tolerations" not in t.k8s and "nodeSelector" not in t.k8s, step
            assert t.container["image"] == "ghcr.io/tlpipe/tlpipe:0.1.0"
        assert t.k8s["podMetadata"]["labels"] == {"tlpipe.io/role": "pipeline"}, step


def test_secrets_only_through_secret_as_env(compiled):
    for step, t in compiled.by_step.items():
        secrets = {s["secretName"]: {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]}
                   for s in t.k8s["secretAsEnv"]}
        expected = {"s3-credentials": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                       "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
                    "mlflow-credentials": {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                           "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}}
        if step in TUNE_STEPS:
            expected["optuna-db"] = {"PGUSER": "PGUSER", "PGPASSWORD": "PGPASSWORD"}
        assert secrets == expected, step
        env = {e["name"]: e["value"] for e in t.container.get("env", [])}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.tlpipe.svc.cluster.local:5000"
        assert env["AWS_ENDPOINT_URL"] == "http://minio.tlpipe.svc.cluster.local:9000"
        assert env["TLPIPE_RUN_GROUP"] == "{{$.pipeline_job_uuid}}"
        assert not {"AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "PGUSER",
                    "MLFLOW_TRACKING_PASSWORD"} & set(env)
        optional = {s["secretName"]: s.get("optional", False) for s in t.k8s["secretAsEnv"]}
        assert optional["mlflow-credentials"] and not optional["s3-credentials"]
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    assert not [n for n in inputs if any(w in n.lower() for w in ("secret", "password", "key", "token"))]
    assert "mlflow-db" not in compiled.text


def test_parallel_for_fans_out_over_create_study_and_fans_in(compiled):
    loop = compiled.tasks["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"]
    assert "tune-create-study" in loop["dependentTasks"]
    assert "for-loop-1" in compiled.tasks["tune-summarize"]["dependentTasks"]


def test_defaults_from_params_and_fingerprint_on_first_tasks(compiled):
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["fine_tune_epochs"]["defaultValue"] == PARAMS.fine_tune.epochs
    assert inputs["train_per_class"]["defaultValue"] == PARAMS.make_subset.train_per_class
    assert inputs["data_source"]["defaultValue"] == ""  # params.yaml points at make_digits' output
    assert inputs["tune_storage"]["defaultValue"].startswith("postgresql://postgres.tlpipe")
    for first in ("make-digits", "make-subset"):
        fp = compiled.tasks[first]["inputs"]["parameters"]["data_fingerprint"]
        assert fp["componentInputParameter"] == "data_fingerprint"
    assert compiled.tasks["register"]["cachingOptions"] == {}  # never replayed from cache
    assert compiled.tasks["evaluate"]["cachingOptions"] == {"enableCache": True}
    assert compiled.spec["defaultPipelineRoot"] == "s3://pipeline-root/tlpipe"  # task artifacts on S3


def test_local_build_has_no_endpoint_env():
    from kfp import compiler

    from pipelines.platform import ClusterConfig

    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"tlpipe-local-{os.getpid()}.yaml"
    compiler.Compiler().compile(tp.build_pipeline(PARAMS, ClusterConfig(task_env=False)), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    out.unlink()
    assert all("env" not in e["container"] for e in spec["deploymentSpec"]["executors"].values())


class FakeClient:
    calls: list = []
    state = "SUCCEEDED"

    def __init__(self, host=None, namespace="kubeflow", **kwargs):
        FakeClient.calls.append(("init", host, namespace))

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None,
                                         experiment_name=None, namespace=None, **kwargs):
        name = next(yaml.safe_load_all(Path(pipeline_file).read_text()))["pipelineInfo"]["name"]
        FakeClient.calls.append(("create", name, arguments, experiment_name, namespace))
        return SimpleNamespace(run_id="run-1")

    def wait_for_run_completion(self, run_id, timeout):
        FakeClient.calls.append(("wait", run_id))
        return SimpleNamespace(state=FakeClient.state)


def test_submit_uploads_compiled_package_to_experiment(monkeypatch):
    import kfp

    monkeypatch.setattr(kfp, "Client", FakeClient)
    FakeClient.calls = []
    tp.main(["--params", PARAMS_FILE, "submit", "--host", "http://kfp.example:8080",
             "--experiment", "tlpipe-dev", "--namespace", "team-a", "--wait", "--arg", "fine_tune_epochs=3",
             "--set", "tune.n_trials=4"])
    init, create, wait = FakeClient.calls
    assert init == ("init", "http://kfp.example:8080", "team-a")
    _, name, arguments, experiment, namespace = create
    assert (name, experiment, namespace) == ("tlpipe-training", "tlpipe-dev", "team-a")
    assert arguments["fine_tune_epochs"] == 3 and arguments["params_overrides"] == {"tune.n_trials": 4}
    assert arguments["data_fingerprint"] == data_fingerprint(PARAMS, "")
    assert wait == ("wait", "run-1")
    FakeClient.state = "FAILED"
    with pytest.raises(SystemExit):
        tp.main(["--params", PARAMS_FILE, "submit", "--host", "h", "--experiment", "e", "--wait"])
    FakeClient.state = "SUCCEEDED"


def test_fingerprint_follows_local_data(tmp_path):
    data = make_tree(tmp_path / "data", per_class=2)
    before = data_fingerprint(PARAMS, str(data))
    assert before == data_fingerprint(PARAMS, str(data)) and before.startswith("local:")
    (data / "a" / "0.png").write_bytes(b"changed")
    assert data_fingerprint(PARAMS, str(data)) != before
    assert data_fingerprint(PARAMS, "").startswith("embedded:")


def test_overrides_and_metrics_helpers():
    assert dotted({"fine_tune": {"epochs": 2}, "tune.n_trials": 3, "tune": {"dropout": None}}) == \
        {"fine_tune.epochs": 2, "tune.n_trials": 3, "tune.dropout": None}
    assert numeric_metrics({"accuracy": 0.5, "n": 4, "ok": True, "frozen": {"loss": 1}, "name": "x"}) == \
        {"accuracy": 0.5, "n": 4.0, "frozen.loss": 1.0}


def test_make_digits_component_resolves_params_once(tmp_path, monkeypatch):
    """The component function itself (tier 1): typed parameters, then params_overrides, then wiring."""
    from pipelines.tasks import make_digits

    monkeypatch.setenv("TLPIPE_PARAMS", str(REPO / "params.yaml"))
    digits = SimpleNamespace(path=str(tmp_path / "digits"), metadata={})
    params = SimpleNamespace(path=str(tmp_path / "params"), metadata={})
    make_digits.python_func(data_source="", backbone="", image_size=16, train_per_class=5,
                            pretrain_epochs=1, fine_tune_epochs=7, tune_n_trials=2,
                            params_overrides={"fine_tune": {"epochs": 3}}, data_fingerprint="embedded:x",
                            digits=digits, params=params)
    resolved = yaml.safe_load(Path(params.path).read_text())
    assert resolved["data"]["source"] == os.path.join(digits.path, "target")
    assert resolved["model"]["backbone"] == "models/backbone.keras" and resolved["model"]["image_size"] == 16
    assert resolved["fine_tune"]["epochs"] == 3  # params_overrides wins over the typed parameter
    assert params.metadata == {"data_fingerprint": "embedded:x"}
    assert sorted(p.name for p in Path(digits.path).iterdir()) == ["source", "target"]


@pytest.mark.slow
def test_run_local_end_to_end(tmp_path):
    """The whole pipeline through kfp.local on the embedded digits, small settings, ending in the registry."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TLPIPE_RUN_GROUP": "kfp-local-test",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.training_pipeline", "--params", PARAMS_FILE, "run-local",
         "--workdir", str(tmp_path / "run"), "--set", "registry.min_accuracy=0.0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "run" / "run_local.json").read_text())
    metrics_file = Path(result["registration_uri"]).parents[1] / "evaluate" / "evaluation" / "metrics.json"
    assert result["metrics"]["accuracy"] == json.loads(metrics_file.read_text())["accuracy"]
    registration = json.loads((Path(result["registration_uri"]) / "registration.json").read_text())
    assert registration["validation_status"] == "passed" and registration["version"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(registration["model_name"], str(registration["version"]))
    assert version.status == "READY"
    runs = client.search_runs([client.get_experiment_by_name(PARAMS.tracking.experiment).experiment_id],
                              "tags.`tlpipe.run_group` = 'kfp-local-test'")
    steps = {r.info.run_name for r in runs}
    assert {"pretrain_backbone", "train_head", "tune", "fine_tune", "evaluate"} <= steps


@pytest.mark.servers
def test_dvc_push_pull_to_s3_remote(tmp_path, s3_server):
    """The repo's DVC remote (.dvc/config) against a moto S3 endpoint: push, lose the cache, pull back."""
    import boto3

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    shutil.copyfile(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    url = run(*dvc, "remote", "list").split()
    assert url[:2] == ["storage", "s3://tlpipe-dvc/cache"]
    bucket = "tlpipe-dvc"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    run(*dvc, "remote", "modify", "--local", "storage", "endpointurl", s3_server)
    assert "endpointurl" not in (repo / ".dvc" / "config").read_text()  # the endpoint stays out of git
    data = make_tree(repo / "data", per_class=3)
    run(*dvc, "add", "data")
    run(*dvc, "push")
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(
        Bucket=bucket, Prefix="cache/")["Contents"]]
    assert len(keys) == 7  # 6 images + the folder's .dir listing
    original = {p.relative_to(data): p.read_bytes() for p in data.rglob("*.png")}
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    run(*dvc, "pull")
    assert {p.relative_to(data): p.read_bytes() for p in data.rglob("*.png")} == original


def test_submit_to_unreachable_host_is_one_line(tmp_path):
    from tests.conftest import free_port

    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.training_pipeline", "--params", PARAMS_FILE, "submit",
         "--host", f"http://127.0.0.1:{free_port()}", "--experiment", "x"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error: KFP API at http://127.0.0.1:" in proc.stderr
