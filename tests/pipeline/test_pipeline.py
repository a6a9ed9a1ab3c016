"""The KFP pipeline built from the declaration: compiled IR, declared inputs only, run-local as on a cluster."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines import training_pipeline as tp
from pipelines.graph import build
from pipelines.kfp_build import all_pods
from pipelines.runtime import numeric_metrics, resolve_params, task_params
from pipelines.step import External, Ref
from tests.conftest import REPO, make_tree
from tlpipe.config import load_params
from tlpipe.data.identity import data_fingerprint

PARAMS_FILE = str(REPO / "params.yaml")
PARAMS = load_params(REPO / "params.yaml")
PODS = all_pods(PARAMS)
STEPS = list(PODS)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline package as compiled by the CLI, with a non-default GPU pool label and image."""
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    tp.main(
        [
            "--params",
            PARAMS_FILE,
            "compile",
            "--output",
            str(out),
            "--gpu-pool",
            "pool=a100",
            "--aws-endpoint-url",
            "http://minio.tlpipe.svc.cluster.local:9000",
            "--pipeline-root",
            "s3://pipeline-root/tlpipe",
            "--image",
            "registry.example/tl:1.2",
        ]
    )
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
                name=name,
                task=task,
                component=comp,
                container=spec["deploymentSpec"]["executors"][label]["container"],
                k8s=platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(label, {}),
            )
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
        declared = {k for k, ref in step.inputs.items() if isinstance(ref, Ref)}
        assert set(artifacts) == declared, name
        # its own params, by value: resolve-params' output named after the step (through the exit handler group)
        own = t.task["inputs"]["parameters"]["params"]["componentInputParameter"]
        assert own == f"pipelinechannel--resolve-params-{name}", name
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
    resolved = resolve_params(base, {"model.image_size": 24}, {"fine_tune": {"epochs": 3}})
    assert resolved["model"]["image_size"] == 24 and resolved["fine_tune"]["epochs"] == 3
    assert resolved["data"]["source"] == "builtin:digits" and resolved["model"]["backbone"] == "pretrain"
    own = yaml.safe_load(task_params(resolved, "fine_tune"))
    assert own["fine_tune"]["epochs"] == 3 and "make_subset" not in own and "tracking" in own


def test_gpu_settings_and_images(compiled):
    for step, t in compiled.by_step.items():
        resources = t.container["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryLimit"], step
        if PODS[step].gpu:
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
        assert "TLPIPE_RUN_GROUP" not in env  # from the pod's run-id label (tests/pipeline/test_kfp_backend.py)
        assert not {"AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "MLFLOW_TRACKING_PASSWORD"} & set(env)
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    assert not [n for n in inputs if any(w in n.lower() for w in ("secret", "password", "key", "token"))]


def test_parallel_for_fans_out_and_summarize_waits_for_the_workers(compiled):
    loop = next(t for t in compiled.tasks.values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"]
    create = next(n for n, t in compiled.tasks.items() if t["taskInfo"]["name"] == "tune create-study")
    assert create in loop["dependentTasks"]
    summarize = compiled.by_step["tune summarize"].task
    assert loop["taskInfo"]["name"] in summarize["dependentTasks"] and "triggerPolicy" not in summarize


def test_defaults_from_params_and_cache_settings(compiled):
    inputs = compiled.spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["fine_tune_epochs"]["defaultValue"] == PARAMS.fine_tune.epochs
    assert inputs["train_per_class"]["defaultValue"] == PARAMS.make_subset.train_per_class
    assert inputs["tune_storage"]["defaultValue"].startswith("postgresql://postgres.tlpipe")
    assert "data_fingerprint" not in inputs  # computed in the run by an uncached task, not by the submitter
    fp = compiled.by_step["make_subset"].task["inputs"]["parameters"]["data_fingerprint"]["taskOutputParameter"]
    assert compiled.tasks[fp["producerTask"]]["taskInfo"]["name"] == "data_fingerprint"
    assert compiled.by_step["register"].task["cachingOptions"] == {}  # never replayed from cache
    assert compiled.spec["defaultPipelineRoot"] == "s3://pipeline-root/tlpipe"
    assert "KFP backend >=" in compiled.spec["pipelineInfo"]["description"]


def test_a_local_path_is_refused_at_compile(tmp_path, capsys):
    data = make_tree(tmp_path / "photos", per_class=2)
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("source: builtin:digits", f"source: {data}", 1))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.training_pipeline",
            "--params",
            str(params),
            "compile",
            "--output",
            str(tmp_path / "p.yaml"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2 and not (tmp_path / "p.yaml").exists()
    assert proc.stderr.count("\n") == 1 and str(data) in proc.stderr and "dvc push" in proc.stderr, proc.stderr


def test_fingerprint_follows_local_data(tmp_path):
    data = make_tree(tmp_path / "data", per_class=2)
    params = load_params(REPO / "params.yaml", {"data.source": str(data)})
    before = data_fingerprint(params)
    assert before == data_fingerprint(params) and before.startswith("local:")
    (data / "a" / "0.png").write_bytes(b"changed")
    assert data_fingerprint(params) != before
    assert data_fingerprint(PARAMS).startswith("embedded:")


def test_overrides_and_metrics_helpers():
    base = {"fine_tune": {"epochs": 9, "patience": 4}, "tune": {"n_trials": 5, "dropout": [0.1, 0.2]}}
    resolved = resolve_params(
        base, {"fine_tune.epochs": 3}, {"fine_tune": {"epochs": 2}, "tune.n_trials": 3, "tune": {"dropout": None}}
    )
    assert resolved["fine_tune"]["epochs"] == 2 and resolved["fine_tune"]["patience"] == 4  # merged, not replaced
    assert resolved["tune"]["n_trials"] == 3 and resolved["tune"]["dropout"] is None
    assert base["fine_tune"]["epochs"] == 9  # the compile-time params are not changed
    assert numeric_metrics({"accuracy": 0.5, "n": 4, "ok": True, "frozen": {"loss": 1}, "name": "x"}) == {
        "accuracy": 0.5,
        "n": 4.0,
        "frozen.loss": 1.0,
    }


@pytest.mark.slow
def test_make_run_local_on_a_fresh_clone(tmp_path):
    """`make run-local` exactly as documented, in a fresh clone, no environment set: every task as in a pod,
    MLflow as a server on loopback, the run's MLflow runs grouped and its pipeline run closed."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=900)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TLPIPE_", "PYTHONPATH"))}
    proc = subprocess.run(["make", "run-local"], cwd=clone, env=env, capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    result = json.loads((clone / "kfp_local" / "run_local.json").read_text())
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert "isolated as UID 10001: python -m components.fine_tune" in out
    assert "MLflow tracking server at http://127.0.0.1:" in out
    root = clone / "kfp_local" / "pipeline-root"
    registration = json.loads(next(root.rglob("registration.json")).read_text())
    assert registration["version"]
    assert not list(clone.glob("mlflow.db")) and not (clone / "checkpoints").exists()  # nothing in the cwd

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{clone / 'kfp_local' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(PARAMS.tracking.experiment)
    assert experiment is not None
    parents = client.search_runs([experiment.experiment_id], "tags.`tlpipe.role` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # closed by the exit handler
    assert parents[0].data.tags["tlpipe.pipeline_state"] == "SUCCEEDED"
    group = parents[0].data.tags["tlpipe.run_group"]
    runs = client.search_runs([experiment.experiment_id], f"tags.`tlpipe.run_group` = '{group}'")
    assert {s.name for s in build(PARAMS)} <= {r.info.run_name for r in runs}


PROBE = """
from kfp import dsl, local
from kfp.dsl import Artifact, Output
import sys

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def write(out: Output[Artifact]):
    import os
    os.makedirs(out.path, exist_ok=True)
    open(os.path.join(out.path, "secret.txt"), "w").write("upstream output")

@dsl.component(base_image="python:3.11", install_kfp_package=False)
def read_undeclared(where: str):
    from pipelines.runtime import run_step
    run_step("probe", "{}", {}, {}, module="tests.pipeline.isolation_probe", values={"path": where})

@dsl.pipeline(name="probe")
def probe():
    w = write()
    # The broken wiring: a path hidden in a string instead of a declared input.
    read_undeclared(where=sys.argv[2]).after(w)

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
    loose = subprocess.run(
        [sys.executable, str(script), str(root), target],
        cwd=tmp_path,
        env=base,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert loose.returncode == 0, loose.stderr[-3000:]  # kfp.local's shared disk hides the bug ...
    shutil.rmtree(root)
    strict = subprocess.run(
        [sys.executable, str(script), str(root), target],
        cwd=tmp_path,
        env={**base, "TLPIPE_ISOLATE": str(root)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert strict.returncode != 0  # ... the cluster-like run does not
    assert "undeclared path" in strict.stdout + strict.stderr
    assert list(root.rglob("secret.txt"))  # the upstream output is still there: only the task could not see it


def _probe(root, mode: str, path: str, scratch: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run tests/pipeline/isolation_probe.py as an isolated task; returns (exit code, what it printed)."""
    values = {"mode": mode, "path": path, **({"scratch": "SCRATCH"} if scratch else {})}
    script = (
        "import sys; from pipelines.isolation import run_isolated; from pathlib import Path; "
        f"run_isolated(Path({str(root)!r}), 'tests.pipeline.isolation_probe', '{{}}', {{}}, {{}}, {values!r}, "
        f"{scratch!r}, '')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "upstream, downstream",
    [
        ("/tmp/tlpipe-probe", "/tmp/tlpipe-probe"),  # a fixed path in /tmp: each pod has its own /tmp
        ("~/.cache/tlpipe-probe", "~/.cache/tlpipe-probe"),  # the task's $HOME: each pod has its own
        ("SCRATCH/leftover", "/tmp"),  # an upstream task's scratch folder: gone with its pod
    ],
)
def test_files_left_outside_declared_outputs_do_not_reach_the_next_task(tmp_path, upstream, downstream):
    from pipelines.isolation import can_isolate

    assert can_isolate(), "run the tests as root with util-linux (unshare, setpriv): the sandbox needs them"
    root = tmp_path / "root"
    root.mkdir()
    code, said = _probe(root, "write", upstream, ("scratch",) if "SCRATCH" in upstream else ())
    assert code == 0 and "as UID 10001" in said, said
    code, said = _probe(root, "read", downstream)
    assert code == 2 and "not reachable" in said, said  # on a cluster the next pod would not find it either


def test_the_invoking_users_home_and_the_pipeline_root_are_hidden(tmp_path):
    root = tmp_path / "root"
    (root / "run" / "task").mkdir(parents=True)
    (root / "run" / "task" / "secret.txt").write_text("another task's output")
    home = Path.home() / ".cache" / f"tlpipe-probe-{uuid.uuid4().hex[:8]}"
    home.mkdir(parents=True)
    try:
        (home / "secret.txt").write_text("a file of the machine's user")
        assert _probe(root, "read", str(home))[0] == 2
        assert _probe(root, "read", str(root))[0] == 2
    finally:
        shutil.rmtree(home)


def test_the_working_directory_is_read_only_for_the_pods_user(tmp_path):
    (tmp_path / "root").mkdir()
    code, said = _probe(tmp_path / "root", "cwd", "")
    assert code == 2 and "UID 10001" in said, said


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
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(Bucket=bucket, Prefix="cache/")["Contents"]
    ]
    assert len(keys) == 7  # 6 images + the folder's .dir listing
    original = {p.relative_to(data): p.read_bytes() for p in data.rglob("*.png")}
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    run(*dvc, "pull")
    assert {p.relative_to(data): p.read_bytes() for p in data.rglob("*.png")} == original
