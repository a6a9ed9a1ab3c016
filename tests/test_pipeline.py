"""The KFP pipeline built from the declaration: compiled IR, declared inputs only, run-local as on a cluster."""

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from pipelines import training_pipeline as tp
from pipelines.fingerprint import data_fingerprint
from pipelines.graph import External, Ref, build
from pipelines.platform import GPU_STEPS, TUNE_STEPS
from pipelines.runtime import dotted, numeric_metrics, resolve_params
from tests.conftest import REPO, make_tree
from tlpipe.config import load_params

PARAMS_FILE = str(REPO / "params.yaml")
PARAMS = load_params(REPO / "params.yaml")
STEPS = [s.name for s in build(PARAMS) if s.name != "tune"] + ["params", *TUNE_STEPS]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline package as compiled by the CLI, with a non-default GPU pool label and image."""
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    tp.main(["--params", PARAMS_FILE, "compile", "--output", str(out), "--gpu-pool", "pool=a100",
             "--aws-endpoint-url", "http://minio.tlpipe.svc.cluster.local:9000",
             "--pipeline-root", "s3://pipeline-root/tlpipe", "--image", "registry.example/tl:1.2"])
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
                name=name, task=task, component=comp, container=spec["deploymentSpec"]["executors"][label]["container"],
                k8s=platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(label, {}))
    return SimpleNamespace(spec=spec, tasks=tasks, by_step=by_step, text=out.read_text())


def test_one_task_per_step_named_after_it(compiled):
    assert sorted(compiled.by_step) == sorted(STEPS)


def test_every_task_reads_exactly_its_declared_inputs(compiled):
    """The KFP wiring is the declaration's: each task's artifact inputs are the steps' declared inputs."""
    steps = {s.name: s for s in build(PARAMS)}
    for name, step in steps.items():
        if name == "tune":
            continue
        t = compiled.by_step[name]
        artifacts = t.task["inputs"].get("artifacts", {})
        declared = {k for k, ref in step.inputs.items() if isinstance(ref, Ref)} | {"params"}
        assert set(artifacts) == declared, name
        for key, ref in step.inputs.items():
            if isinstance(ref, Ref):
                source = artifacts[key]["taskOutputArtifact"]
                producer = "tune summarize" if ref.step == "tune" else ref.step
                assert source["outputArtifactKey"] == ref.output, (name, key)
                assert compiled.tasks[source["producerTask"]]["taskInfo"]["name"] == producer, (name, key)
            elif isinstance(ref, External):
                assert t.task["inputs"]["parameters"][key]["runtimeValue"]["constant"] == ref.value


def test_params_artifact_holds_configuration_not_paths(compiled, tmp_path):
    base = json.loads(compiled.by_step["params"].task["inputs"]["parameters"]["base"]["runtimeValue"]["constant"])
    outputs = {o.path for s in build(PARAMS) for o in s.outputs}

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    values = list(strings(base))
    assert values and not [v for v in values if v.startswith("/") or any(v.startswith(o) for o in outputs)]
    resolved = resolve_params(str(tmp_path), base, {"model.image_size": 24}, {"fine_tune": {"epochs": 3}})
    assert resolved["model"]["image_size"] == 24 and resolved["fine_tune"]["epochs"] == 3
    assert resolved["data"]["source"] == "builtin:digits" and resolved["model"]["backbone"] == "pretrain"


def test_gpu_settings_and_images(compiled):
    for step, t in compiled.by_step.items():
        resources = t.container["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryLimit"], step
        if step in GPU_STEPS:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", step
            assert t.k8s["nodeSelector"]["labels"] == {"pool": "a100"}, step
            assert t.container["image"] == "registry.example/tl:1.2-gpu", step
        else:
            assert "accelerator" not in resources, step
            assert "nodeSelector" not in t.k8s, step
            assert t.container["image"] == "registry.example/tl:1.2", step
        assert t.k8s["podMetadata"]["labels"] == {"tlpipe.io/role": "pipeline"}, step
        env = {e["name"]: e["value"] for e in t.container.get("env", [])}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.tlpipe.svc.cluster.local:5000"
        assert not {"AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "MLFLOW_TRACKING_PASSWORD"} & set(env)
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    assert not [n for n in inputs if any(w in n.lower() for w in ("secret", "password", "key", "token"))]


def test_parallel_for_fans_out_and_summarize_runs_after_a_failed_worker(compiled):
    loop = compiled.tasks["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"]
    assert "tune-create-study" in loop["dependentTasks"]
    summarize = compiled.tasks["tune-summarize"]
    assert "for-loop-1" in summarize["dependentTasks"]
    assert summarize["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_defaults_from_params_and_cache_settings(compiled):
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["fine_tune_epochs"]["defaultValue"] == PARAMS.fine_tune.epochs
    assert inputs["train_per_class"]["defaultValue"] == PARAMS.make_subset.train_per_class
    assert inputs["tune_storage"]["defaultValue"].startswith("postgresql://postgres.tlpipe")
    fp = compiled.tasks["make-subset"]["inputs"]["parameters"]["data_fingerprint"]
    assert fp["componentInputParameter"] == "data_fingerprint"
    assert compiled.tasks["register"]["cachingOptions"] == {}  # never replayed from cache
    assert compiled.spec["defaultPipelineRoot"] == "s3://pipeline-root/tlpipe"
    assert "KFP backend >=" in compiled.spec["pipelineInfo"]["description"]


def test_fingerprint_follows_local_data(tmp_path):
    data = make_tree(tmp_path / "data", per_class=2)
    params = load_params(REPO / "params.yaml", {"data.source": str(data)})
    before = data_fingerprint(params)
    assert before == data_fingerprint(params) and before.startswith("local:")
    (data / "a" / "0.png").write_bytes(b"changed")
    assert data_fingerprint(params) != before
    assert data_fingerprint(PARAMS).startswith("embedded:")


def test_overrides_and_metrics_helpers():
    assert dotted({"fine_tune": {"epochs": 2}, "tune.n_trials": 3, "tune": {"dropout": None}}) == \
        {"fine_tune.epochs": 2, "tune.n_trials": 3, "tune.dropout": None}
    assert numeric_metrics({"accuracy": 0.5, "n": 4, "ok": True, "frozen": {"loss": 1}, "name": "x"}) == \
        {"accuracy": 0.5, "n": 4.0, "frozen.loss": 1.0}


def _local_env(tmp_path, group):
    return {**os.environ, "PYTHONPATH": str(REPO), "TLPIPE_RUN_GROUP": group,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


@pytest.mark.slow
def test_run_local_end_to_end_with_tasks_isolated(tmp_path):
    """The whole pipeline through kfp.local, each task seeing only copies of its declared inputs."""
    env = _local_env(tmp_path, "kfp-local-test")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.training_pipeline", "--params", PARAMS_FILE, "run-local",
         "--workdir", str(tmp_path / "run"), "--set", "registry.min_accuracy=0.0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "run" / "run_local.json").read_text())
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    root = tmp_path / "run" / "pipeline-root"
    assert root.is_dir()
    assert "isolated: python -m components.fine_tune" in proc.stdout + proc.stderr
    params_files = list(root.rglob("params.yaml"))
    assert params_files and str(root) not in params_files[0].read_text()  # configuration, never a path
    registrations = list(root.rglob("registration.json"))
    registration = json.loads(registrations[0].read_text())
    assert registration["validation_status"] == "passed" and registration["version"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(PARAMS.tracking.experiment).experiment_id],
                              "tags.`tlpipe.run_group` = 'kfp-local-test'")
    assert set(STEPS) - {"params", *TUNE_STEPS} <= {r.info.run_name for r in runs}


PROBE = """
from kfp import dsl, local
from kfp.dsl import Artifact, Input, Output
import sys

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def write(out: Output[Artifact]):
    import os
    os.makedirs(out.path, exist_ok=True)
    open(os.path.join(out.path, "secret.txt"), "w").write("upstream output")

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def read_undeclared(params: Input[Artifact], where: str):
    from pipelines.runtime import run_step
    run_step("probe", params.path, {}, {}, module="tests.isolation_probe", values={"path": where})

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def params_task(params: Output[Artifact]):
    import os
    os.makedirs(params.path, exist_ok=True)
    open(os.path.join(params.path, "params.yaml"), "w").write("{}")

@dsl.pipeline(name="probe")
def probe():
    w = write()
    p = params_task()
    # The broken wiring: a path hidden in a string instead of a declared input.
    read_undeclared(params=p.outputs["params"], where=sys.argv[2]).after(w)

local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1])
probe()
"""


@pytest.mark.slow
def test_a_task_reading_an_undeclared_path_fails_when_isolated(tmp_path):
    """A deliberately broken task reads another task's output through a path it did not declare."""
    root = tmp_path / "root"
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    target = str(root)  # everything the upstream task wrote lives under the pipeline root
    base = {**os.environ, "PYTHONPATH": str(REPO)}
    loose = subprocess.run([sys.executable, str(script), str(root), target], cwd=tmp_path, env=base,
                           capture_output=True, text=True, timeout=900)
    assert loose.returncode == 0, loose.stderr[-3000:]  # kfp.local's shared disk hides the bug ...
    shutil.rmtree(root)
    strict = subprocess.run([sys.executable, str(script), str(root), target], cwd=tmp_path,
                            env={**base, "TLPIPE_ISOLATE": str(root)}, capture_output=True, text=True, timeout=900)
    assert strict.returncode != 0  # ... the cluster-like run does not
    assert "undeclared path" in strict.stdout + strict.stderr
    assert list(root.rglob("secret.txt"))  # the upstream output is still there: only the task could not see it


@pytest.mark.servers
def test_dvc_push_pull_to_s3_remote(tmp_path, s3_server):
    """The repo's DVC remote (.dvc/config) against a moto S3 endpoint: push, lose the cache, pull back."""
    import boto3

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
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




FAN_IN = """
import sys
from kfp import dsl, local

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def indices() -> list:
    return [0, 1]

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def worker(index: int):
    if index == 0:
        raise RuntimeError("worker 0 preempted")

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def summarize(marker: str):
    open(marker, "w").write("summarized")

@dsl.pipeline(name="fan-in")
def fan_in():
    made = indices()
    with dsl.ParallelFor(made.output) as index:
        w = worker(index=index)
    s = summarize(marker=sys.argv[2]).after(w)
    s.ignore_upstream_failure()

local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1], raise_on_error=False)
fan_in()
"""


@pytest.mark.slow
def test_summarize_runs_after_a_failed_tuning_worker_in_kfp_local(tmp_path, compiled):
    """The mechanism tune summarize relies on, run for real: one ParallelFor worker fails, the fan-in still runs."""
    summarize = compiled.tasks["tune-summarize"]
    assert summarize["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # our pipeline uses it
    script = tmp_path / "fan_in.py"
    script.write_text(FAN_IN)
    marker = tmp_path / "summarized.txt"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "root"), str(marker)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=900)
    assert "worker 0 preempted" in proc.stdout + proc.stderr
    assert marker.read_text() == "summarized", proc.stderr[-3000:]
