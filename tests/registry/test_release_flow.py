"""The documented release flow: `make compile IMAGE=... TAG=...`, then `make submit HOST=...` sends that file."""

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines import training_pipeline as tp
from pipelines.kfp_build import all_pods
from pipelines.platform import DEFAULT_IMAGE
from tests.conftest import REPO
from tlpipe.config import load_params

# As a user's shell runs make: not as a sub-make of `make test` (which prints "Entering directory" lines).
ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


def _make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900
    )


def test_make_compile_writes_the_image_asked_for_and_submit_sends_that_file(tmp_path):
    package = tmp_path / "p.yaml"
    done = _make(
        "compile",
        "IMAGE=registry.example/tl",
        "TAG=1.2",
        f"PACKAGE={package}",
        "PULL_SECRET=regcred",
        "PIPELINE_ROOT=s3://root/tl",
        "LEGACY=1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert tp.package_images(package) == {"registry.example/tl:1.2", "registry.example/tl:1.2-gpu"}
    spec, platform = list(yaml.safe_load_all(package.read_text()))
    assert spec["defaultPipelineRoot"] == "s3://root/tl"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    assert all(e["imagePullSecret"] == [{"secretName": "regcred"}] for e in executors)  # legacy: no parameter
    dry = _make(
        "-n",
        "submit",
        "HOST=http://kfp.example:8080",
        f"PACKAGE={package}",
        "RUN_NAME=nightly run",
        "ARGS=--arg fine_tune_epochs=3 --set tune.n_trials=4",
        "NAMESPACE=team-a",
    )
    command = dry.stdout.replace("\\\n", " ").strip().splitlines()[-1]
    assert "compile" not in command.split("submit")[0]  # submit never recompiles what you compiled
    for part in (
        f"--package {package}",
        '--run-name "nightly run"',
        "--arg fine_tune_epochs=3",
        "--set tune.n_trials=4",
        "--namespace team-a",
    ):
        assert part in command, command


def test_make_refuses_half_pinned_images_and_a_missing_package(tmp_path):
    done = _make("compile", "DIGEST=sha256:" + "a" * 64, f"PACKAGE={tmp_path / 'p.yaml'}")
    assert done.returncode == 2 and "GPU_DIGEST" in done.stdout + done.stderr
    assert not (tmp_path / "p.yaml").exists()
    done = _make("submit", "HOST=http://127.0.0.1:9", f"PACKAGE={tmp_path / 'missing.yaml'}")
    assert done.returncode == 2 and "make compile" in done.stdout + done.stderr


def test_make_image_passes_the_commit():
    dry = _make("-n", "image", "image-gpu")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert dry.stdout.count(f"--build-arg GIT_COMMIT={commit}") == 2, dry.stdout


class RecordingClient:
    """Stands in for kfp.Client (no KFP API server can run here; tests/pipeline/test_submit.py talks HTTP to one)."""

    created: list = []

    def __init__(self, host=None, **kwargs):
        self.host = host

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None, **kwargs):
        RecordingClient.created.append((pipeline_file, arguments, run_name))
        return SimpleNamespace(run_id="abc-123")


@pytest.fixture
def recording(monkeypatch):
    import kfp

    monkeypatch.setattr(kfp, "Client", RecordingClient)
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    RecordingClient.created = []
    return RecordingClient


def _compiled(tmp_path: Path, *image: str) -> Path:
    out = tmp_path / "pipeline.yaml"
    tp.main(["--params", str(REPO / "params.yaml"), "compile", "--output", str(out), *image])
    return out


def test_submit_refuses_the_placeholder_image_unless_allowed(tmp_path, recording, capsys):
    package = _compiled(tmp_path)
    assert DEFAULT_IMAGE in tp.package_images(package)
    args = ["submit", "--package", str(package), "--host", "http://kfp.example", "--experiment", "x"]
    with pytest.raises(SystemExit) as refused:
        from tlpipe.cli import run_main

        run_main(tp.main, args)
    assert refused.value.code == 2 and "ALLOW_DEFAULT_IMAGE=1" in capsys.readouterr().err
    assert recording.created == []
    tp.main([*args, "--allow-default-image", "--run-name", "mine", "--arg", "fine_tune_epochs=3"])
    ((sent, arguments, name),) = recording.created
    assert Path(sent) == package and name == "mine" and arguments == {"fine_tune_epochs": 3}
    assert "run page: http://kfp.example/#/runs/details/abc-123" in capsys.readouterr().out


def test_summarize_is_gpu_work_only_when_the_sweep_runs():
    swept = all_pods(load_params(REPO / "params.yaml", {"tune.sweep": True}))["tune summarize"]
    assert swept.gpu and swept.disk and swept.study
    plain = all_pods(load_params(REPO / "params.yaml", {"tune.sweep": False}))["tune summarize"]
    assert not plain.gpu and not plain.disk


def test_the_exit_handler_marks_a_failed_run_failed(tmp_path, monkeypatch):
    from pipelines.runtime import close_pipeline_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TLPIPE_RUN_GROUP", "kfp-run-42")
    close_pipeline_run("tracking:\n  experiment: tlpipe-exit\n", "FAILED", "task fine_tune failed: OOMKilled")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tlpipe-exit")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], "tags.`tlpipe.run_group` = 'kfp-run-42'")
    assert run.info.status == "FAILED" and "OOMKilled" in run.data.tags["tlpipe.error"]
    assert run.data.tags["tlpipe.pipeline_state"] == "FAILED"


def test_the_compiled_package_is_not_committed():
    tracked = subprocess.run(["git", "ls-files", "pipelines/*.yaml"], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout.strip() == ""  # built per image and params by `make compile` (pipelines/README.md)


def test_the_tuning_workers_scratch_is_sized_from_its_cache_plan():
    """Issue 25: the worker's emptyDir comes from the activation cache estimate (tlpipe/tuning/sizing.py)."""
    from pipelines.platform import SCRATCH, ClusterConfig

    small = all_pods(load_params(REPO / "params.yaml"))["tune worker"]
    assert ClusterConfig().resources_for(small).scratch == SCRATCH  # the digits fit the default
    big = load_params(
        REPO / "params.yaml",
        {
            "model.backbone": "resnet50",
            "model.image_size": 224,
            "make_subset.train_per_class": 2000,
            "make_subset.val_per_class": 300,
        },
    )
    worker = all_pods(big)["tune worker"]
    assert ClusterConfig().resources_for(worker).scratch == "60Gi" and worker.disk
