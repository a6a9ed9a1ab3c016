"""Same inputs, same model; secrets never printed; kills leave nothing half-done (issue: study identity, ...)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, TINY, free_port, write_params

CANARY = "CanarySecret4242"


def cli(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 900):
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )


def no_canary(proc, folder: Path | None = None):
    assert CANARY not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for path in folder.rglob("*") if folder else []:
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert CANARY.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_no_secret_reaches_a_message_or_a_file(tmp_path):
    """Canary credentials in every URI and variable; every error path answers in one line without them."""
    dead = f"127.0.0.1:{free_port()}"
    params = write_params(tmp_path / "params.yaml", "builtin:digits", registry={"http_retries": 0, "http_timeout": 2})
    env = {
        "MLFLOW_TRACKING_URI": f"http://alice:{CANARY}@{dead}/",
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "AWS_ACCESS_KEY_ID": "test",
        "MLFLOW_TRACKING_PASSWORD": CANARY,
        "PGPASSWORD": CANARY,
    }
    tracking = cli("components.make_digits", "--params", str(params), "--digits", "out", cwd=tmp_path, env=env)
    assert tracking.returncode == 2 and "MLflow tracking at http://***@" in tracking.stderr
    no_canary(tracking, tmp_path)
    registry = cli("operators.registry", "--params", str(params), "status", cwd=tmp_path, env=env)
    assert registry.returncode == 2 and "error: MLflow registry at http://***@" in registry.stderr
    no_canary(registry, tmp_path)
    pg = cli(
        "operators.registry",
        "--params",
        str(params),
        "status",
        cwd=tmp_path,
        env={**env, "MLFLOW_TRACKING_URI": f"postgresql://alice:{CANARY}@{dead}/mlflow"},
    )
    assert pg.returncode == 2 and "postgresql+psycopg2://***@" in pg.stderr  # one line, the driver we ship
    no_canary(pg, tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["tune"] = {"storage": f"postgresql://alice:{CANARY}@{dead}/optuna"}
    inputs = tmp_path.parent / f"{tmp_path.name}-inputs"  # the user's own file holds the canary; outputs must not
    inputs.mkdir(exist_ok=True)
    (inputs / "bad.yaml").write_text(yaml.safe_dump(raw))
    storage = cli("pipelines.dvc_yaml", "--params", str(inputs / "bad.yaml"), "--out", "dvc.yaml", cwd=tmp_path)
    assert storage.returncode == 2 and "PGUSER/PGPASSWORD" in storage.stderr
    no_canary(storage, tmp_path)
    s3 = cli(
        "components.make_subset",
        "--params",
        str(params),
        "--raw",
        "s3://bucket/photos/",
        "--subset",
        "subset",
        cwd=tmp_path,
        env={
            **env,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
            "AWS_ENDPOINT_URL": f"http://{dead}",
            "AWS_MAX_ATTEMPTS": "1",
        },
    )
    assert s3.returncode == 2
    no_canary(s3, tmp_path)


def test_redaction_helper():
    from tlpipe.redact import redact, redact_text

    assert (
        redact(f"postgresql://alice:{CANARY}@db:5432/x?sslpassword={CANARY}&a=1")
        == "postgresql://***@db:5432/x?sslpassword=***&a=1"
    )
    assert CANARY not in redact_text(f"failed: http://bob:{CANARY}@host/path and more")


def tiny_run(root: Path, **extra) -> Path:
    root.mkdir(parents=True)
    sections = {**TINY, "tune": {**TINY["tune"], "storage": f"sqlite:///{root / 'optuna.db'}", "sweep": False}, **extra}
    write_params(root / "params.yaml", "builtin:digits", **sections)
    from pipelines.local import run_steps

    run_steps(
        root,
        [
            s
            for s in (
                "make_digits",
                "make_subset",
                "validate_data",
                "augment",
                "pretrain_backbone",
                "extract_features",
                "train_head",
                "tune",
                "fine_tune",
            )
        ],
    )
    return root


@pytest.mark.slow
def test_two_runs_from_scratch_are_byte_identical(tmp_path):
    a = tiny_run(tmp_path / "a")
    b = tiny_run(tmp_path / "b")
    best_a, best_b = (json.loads((r / "reports/tune/best_params.json").read_text()) for r in (a, b))
    for best in (best_a, best_b):
        best.pop("study_name")  # same fingerprint; the name is the same too
    assert best_a == best_b
    assert best_a["stopped_by"] == "n_trials"
    assert (a / "reports/fine_tune/metrics.json").read_bytes() == (b / "reports/fine_tune/metrics.json").read_bytes()


@pytest.mark.slow
def test_a_killed_fine_tune_resumes_to_the_uninterrupted_result(tiny_project, tmp_path):
    """SIGKILL after two epochs, rerun: the same weights as a run that was never interrupted."""
    import keras

    runs = {}
    for name in ("straight", "killed"):
        root = tmp_path / name
        shutil.copytree(tiny_project, root)
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["fine_tune"].update(epochs=5, patience=5)
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        (root / "reports/tune").mkdir(parents=True, exist_ok=True)
        (root / "reports/tune/best_params.json").write_text(json.dumps({"source": "params"}))
        args = [
            "--params",
            "params.yaml",
            "--subset",
            "data/subset",
            "--validation",
            "data/validation",
            "--head",
            "models/head",
            "--backbone",
            "models/backbone",
            "--tuning",
            "reports/tune",
            "--baseline",
            "models/scratch",  # not in the tiny project: no scratch candidate
            "--model",
            "models/fine_tune",
            "--report",
            "reports/fine_tune",
            "--workdir",
            "checkpoints/fine_tune",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        if name == "killed":
            proc = subprocess.Popen(
                [sys.executable, "-m", "components.fine_tune", *args],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.time() + 900
            while time.time() < deadline:
                states = list((root / "checkpoints/fine_tune").glob("*/state.json"))
                if states and json.loads(states[0].read_text())["epoch"] >= 2:
                    break
                assert proc.poll() is None, "fine_tune ended before it could be killed"
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done = subprocess.run(
            [sys.executable, "-m", "components.fine_tune", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        if name == "killed":
            assert "resuming from epoch" in done.stdout
        runs[name] = keras.saving.load_model(root / "models/fine_tune/model.keras").get_weights()
    for w1, w2 in zip(runs["straight"], runs["killed"], strict=True):
        np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)


def test_stale_staging_folders_are_removed_on_the_next_start(tmp_path):
    from tlpipe.fs import atomic_dir

    stale = tmp_path / ".subset.partial-deadbeef"
    (stale / "train").mkdir(parents=True)
    with atomic_dir(tmp_path / "subset") as staged:
        (staged / "ok").write_text("x")
    assert not stale.exists() and (tmp_path / "subset/ok").is_file()


def test_runs_of_a_killed_step_are_closed_when_it_next_starts(tmp_path):
    import mlflow

    from tlpipe.step_params import load_step_params
    from tlpipe.tracking.runs import OWNER_TAG, step_run

    params_file = write_params(tmp_path / "params.yaml", "builtin:digits")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.set_experiment("tests")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = mlflow.MlflowClient()
    orphan = client.create_run(
        experiment.experiment_id,
        run_name="augment",
        tags={"tlpipe.step": "augment", OWNER_TAG: f"{os.uname().nodename}:{dead.pid}"},
    )
    params = load_step_params(params_file, "augment", ("augment",))
    with step_run(params, "augment"):
        pass
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"


def test_activation_cache_evicts_least_recently_used(tmp_path):
    from tlpipe.tuning.trial import ActivationCache

    cache = ActivationCache(tmp_path, memory_bytes=0, dtype="float32", disk_bytes=2500)
    for i, name in enumerate(("old", "mid")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.npy").write_bytes(b"x" * 1000)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    assert cache.evict(1000) == 1
    assert not (tmp_path / "old").exists() and (tmp_path / "mid").exists()


def test_a_killed_runs_scratch_folder_is_removed_on_the_next_start(tmp_path, monkeypatch):
    import tempfile

    from tlpipe.fs import scratch_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"tlpipe-register-{dead.pid}-abc"
    stale.mkdir()
    with scratch_dir("register") as work:
        assert work.is_dir() and not stale.exists()
    assert not work.exists()


def test_untrained_application_backbone_means_training_from_scratch():
    """weights: none on a keras.applications backbone: nothing to transfer, so no freeze ratio is searched."""
    from components.fine_tune import hyperparams
    from tlpipe.contracts import BestParams
    from tlpipe.models.fitting import chance_level
    from tlpipe.sections import FineTuneConfig
    from tlpipe.tuning.context import regimes

    assert regimes(["transfer", "scratch"], "mobilenet_v2", "none") == ["scratch"]
    assert regimes(["transfer", "scratch"], "mobilenet_v2", "imagenet") == ["transfer", "scratch"]
    assert regimes(["transfer"], "models/backbone", "none") == ["transfer"]  # our own pretrained backbone
    hp = hyperparams(BestParams(source="params"), FineTuneConfig(), 0.3, 64, "resnet50", "none")
    assert hp.regime == "scratch" and hp.freeze_ratio == 0.0
    assert chance_level(0.2, 5) and chance_level(0.21, 5) and not chance_level(0.6, 5)
