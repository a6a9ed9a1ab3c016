"""register / review / promote / rollback / status / predict against real MLflow tracking servers on loopback.

Three challengers come from one real fine-tuned model: the model itself, and copies whose output layer can
never predict one or two classes (bias -50). Knocking out a class whose test images the model gets right
costs accuracy, so the three are ordered best > weak > worst on every test set.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, run_cli

pytestmark = [pytest.mark.servers, pytest.mark.slow]

REGISTRY = {"model_name": "digits", "min_accuracy": 0.3, "min_improvement": 0.0, "http_retries": 1,
            "http_timeout": 5}


def start_mlflow(root: Path, port: int, artifacts: str, env: dict) -> subprocess.Popen:
    """`mlflow server` with a SQLite backend (the registry needs SQL); waits for /health."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Job execution (GenAI background jobs) spawns seven extra worker processes the registry does not use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env}
    proc = subprocess.Popen(cmd, env=env, stdout=open(root / "server.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
    raise AssertionError("mlflow server did not become healthy: " + (root / "server.log").read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def s3_mlflow(tmp_path_factory, s3_server):
    """A tracking server whose artifact store is a bucket on the moto S3 endpoint."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="mlflow-art")
    root = tmp_path_factory.mktemp("mlflow-s3")
    port = free_port()
    proc = start_mlflow(root, port, "s3://mlflow-art/artifacts", {"MLFLOW_S3_ENDPOINT_URL": s3_server})
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def project_params(tiny_project: Path, dest: Path, **registry) -> Path:
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["registry"] = {**REGISTRY, **registry}
    dest.write_text(yaml.safe_dump(raw))
    return dest


def knock_out(model_dir: Path, classes_off: list[int], dest: Path, params_file: Path, uri: str,
              subset: Path) -> Path:
    """A copy of a fine-tuned model that never predicts `classes_off`, logged as its own MLflow run."""
    import keras

    import components.augment  # noqa: F401
    from components.common import read_json, write_json
    from components.config import load_params
    from components.datasets import load_split
    from components.fine_tune import _log_model
    from components.tracking import step_run

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    output = [lay for lay in model._flatten_layers() if lay.name == "head_output"][0]
    kernel, bias = output.get_weights()
    bias[classes_off] = -50.0
    output.set_weights([kernel, bias])
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        params = load_params(params_file)
        info = read_json(model_dir / "run.json")
        with step_run(params, "fine_tune") as run:
            x_val, _, _ = load_split(subset, "val", params.model.image_size)
            model_uri = _log_model(model, x_val)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    dest.mkdir(parents=True)
    model.save(dest / "model.keras")
    write_json(dest / "run.json", {**info, "run_id": run.info.run_id, "model_uri": model_uri})
    return dest


@pytest.fixture(scope="module")
def challengers(tiny_project, tmp_path_factory, s3_mlflow, s3_server):
    """best (real fine_tune CLI), weak (one class off), worst (two classes off): model folders."""
    root = tmp_path_factory.mktemp("challengers")
    params = project_params(tiny_project, root / "params.yaml")
    env = {"MLFLOW_TRACKING_URI": s3_mlflow, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    done = run_cli("fine_tune", "--params", str(params), "--subset", str(tiny_project / "data/subset"),
                   "--head", str(tiny_project / "models/head.keras"), "--out", str(root / "best"),
                   "--report-dir", str(root / "best-report"), "--workdir", str(root / "ckpt"),
                   cwd=tiny_project, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"params": params, "env": env, "best": root / "best",
            "weak": knock_out(root / "best", [0], root / "weak", params, s3_mlflow, tiny_project / "data/subset"),
            "worst": knock_out(root / "best", [0, 1], root / "worst", params, s3_mlflow,
                               tiny_project / "data/subset")}


def register(tiny_project, c, which: str, out: Path, params: Path | None = None):
    return run_cli("register", "--params", str(params or c["params"]), "--model-dir", str(c[which]),
                   "--subset", str(tiny_project / "data/subset"), "--out", str(out), cwd=tiny_project,
                   env=c["env"])


def registry(tiny_project, c, *args: str):
    return run_cli("registry", "--params", str(c["params"]), *args, cwd=tiny_project, env=c["env"])


def test_lifecycle_first_better_worse_promote_rollback(tiny_project, challengers, tmp_path):
    import mlflow

    from components.common import read_json

    c = challengers
    client = mlflow.MlflowClient(c["env"]["MLFLOW_TRACKING_URI"], c["env"]["MLFLOW_TRACKING_URI"])

    # 1. The first model: no champion to compare with; the accuracy floor alone decides.
    first = register(tiny_project, c, "weak", tmp_path / "r1")
    assert first.returncode == 0, first.stderr[-3000:]
    r1 = read_json(tmp_path / "r1/registration.json")
    assert (r1["version"], r1["validation_status"], r1["champion_version"]) == ("1", "passed", None)
    assert client.get_model_version_by_alias("digits", "challenger").version == "1"
    v1 = client.get_model_version("digits", "1")
    for tag in ("git_commit", "test_accuracy", "backbone", "freeze_ratio", "learning_rate", "test_set_sha256",
                "data_validation", "classes", "training_run_id"):
        assert tag in v1.tags, tag
    assert "fine-tuned with freeze ratio" in v1.description
    with pytest.raises(Exception, match="alias"):
        client.get_model_version_by_alias("digits", "champion")  # register never promotes by itself

    # The artifacts went to the S3 bucket through the server.
    import boto3

    s3 = boto3.client("s3", endpoint_url=c["env"]["MLFLOW_S3_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow-art").get("Contents", [])]
    assert any(k.endswith("evidence/gate.json") for k in keys)

    promoted = registry(tiny_project, c, "promote", "1", "--reason", "first model")
    assert promoted.returncode == 0, promoted.stderr
    assert client.get_model_version_by_alias("digits", "champion").version == "1"

    # 2. A worse challenger fails the gate against the champion on the same test set; promote refuses it.
    worse = register(tiny_project, c, "worst", tmp_path / "r2")
    assert worse.returncode == 0, worse.stderr[-3000:]
    r2 = read_json(tmp_path / "r2/registration.json")
    assert r2["validation_status"] == "failed" and r2["champion_version"] == "1"
    assert r2["test_accuracy"] < r2["champion_test_accuracy"]
    assert any("accuracy_gain_over_champion" in reason for reason in r2["reasons"])
    assert client.get_model_version("digits", r2["version"]).tags["validation_status"] == "failed"
    refused = registry(tiny_project, c, "promote", r2["version"], "--reason", "try")
    assert refused.returncode == 2 and "validation_status=failed" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert client.get_model_version_by_alias("digits", "champion").version == "1"

    # 3. A better challenger passes; promote moves @champion and keeps the old one as @previous.
    better = register(tiny_project, c, "best", tmp_path / "r3")
    assert better.returncode == 0, better.stderr[-3000:]
    r3 = read_json(tmp_path / "r3/registration.json")
    assert r3["validation_status"] == "passed" and r3["test_accuracy"] > r3["champion_test_accuracy"]

    # 3b. The review of the challenger, before the promotion decision: one HTML with every section and
    # embedded images, logged on the version.
    review = run_cli("review", "--params", str(c["params"]), "--out", str(tmp_path / "review"),
                     cwd=tiny_project, env=c["env"])
    assert review.returncode == 0, review.stderr[-3000:]
    page = (tmp_path / "review/review.html").read_text()
    for section in ("summary", "metrics", "per-class", "confusion", "mistakes", "training", "tuning",
                    "lineage", "params"):
        assert f"id='{section}'" in page, section
    # Both confusion matrices and the training curves, plus the mistakes grid unless there are none.
    perfect = read_json(tmp_path / "r3/registration.json")["test_accuracy"] == 1.0
    assert page.count("data:image/png;base64,") >= (3 if perfect else 4)
    assert ("every test image right" in page) == perfect
    assert "Gate: **passed**" in (tmp_path / "review/review.md").read_text()
    assert client.get_model_version("digits", r3["version"]).tags["review_artifact"].endswith("review.html")

    promoted = registry(tiny_project, c, "promote", "@challenger", "--reason", "better on the same test set")
    assert promoted.returncode == 0, promoted.stderr
    assert client.get_model_version_by_alias("digits", "champion").version == r3["version"]
    assert client.get_model_version_by_alias("digits", "previous").version == "1"
    tags = client.get_model_version("digits", r3["version"]).tags
    assert tags["promoted_reason"] == "better on the same test set" and tags["promoted_by"]

    # 4. Re-registering the same training run reuses its version.
    again = register(tiny_project, c, "best", tmp_path / "r4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_json(tmp_path / "r4/registration.json")["version"] == r3["version"]
    assert len(client.search_model_versions("name = 'digits'")) == 3

    # 5. Rollback returns @champion to @previous; status lists every version with its aliases.
    rolled = registry(tiny_project, c, "rollback", "--reason", "drift in production")
    assert rolled.returncode == 0, rolled.stderr
    assert client.get_model_version_by_alias("digits", "champion").version == "1"
    status = registry(tiny_project, c, "status")
    assert status.returncode == 0 and "@champion" in status.stdout and "failed" in status.stdout

    # 6. Forced promotion needs a reason and records it.
    forced = registry(tiny_project, c, "promote", r2["version"], "--reason", "hotfix for class 9", "--force")
    assert forced.returncode == 0, forced.stderr
    assert client.get_model_version("digits", r2["version"]).tags["promoted_forced"] == "true"

    # 7. predict runs @champion over a folder and writes a CSV with one row per image: a CMYK JPEG is
    # converted and predicted, a text file named .png gets its reason instead of failing the run.
    from PIL import Image

    images = tmp_path / "mine"
    shutil.copytree(tiny_project / "data/subset/test", images)
    Image.open(next(images.rglob("*.png"))).convert("CMYK").save(images / "cmyk.jpg")
    (images / "notes.png").write_text("not an image")
    out = tmp_path / "pred.csv"
    pred = registry(tiny_project, c, "predict", str(images), "--out", str(out))
    assert pred.returncode == 0, pred.stderr[-3000:]
    import pandas as pd

    frame = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert len(frame) == len(list(images.rglob("*.png"))) + 1
    assert frame.loc[str(images / "notes.png"), "error"].startswith("not an image")
    assert frame.loc[str(images / "cmyk.jpg"), "predicted"] != "" and frame.loc[str(images / "cmyk.jpg"), "error"] == ""
    assert (frame.drop(index=str(images / "notes.png"))["confidence"].astype(float) > 0).all()


def test_tracking_server_down_fails_fast_without_partial_state(tiny_project, challengers, tmp_path):
    """A server with local artifacts: one version registered, the server stops, the next register fails in
    bounded time with one line, and after a restart the registry is exactly as before."""
    import mlflow

    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    proc = start_mlflow(root, port, str(root / "artifacts"), {})
    uri = f"http://127.0.0.1:{port}"
    subset = tiny_project / "data/subset"
    try:
        c = {"params": challengers["params"], "env": {"MLFLOW_TRACKING_URI": uri},
             "a": knock_out(challengers["best"], [], tmp_path / "a", challengers["params"], uri, subset),
             "b": knock_out(challengers["best"], [2], tmp_path / "b", challengers["params"], uri, subset)}
        first = register(tiny_project, c, "a", tmp_path / "r1")
        assert first.returncode == 0, first.stderr[-3000:]
    finally:
        stop(proc)
    started = time.time()
    down = register(tiny_project, c, "b", tmp_path / "r2")
    assert down.returncode == 2, down.stderr[-3000:]
    assert "did not answer" in down.stderr and "Traceback" not in down.stderr, down.stderr[-2000:]
    assert len(down.stderr.strip().splitlines()) == 1
    assert time.time() - started < 120
    assert not (tmp_path / "r2").exists()
    proc = start_mlflow(root, port, str(root / "artifacts"), {})
    try:
        client = mlflow.MlflowClient(uri, uri)
        assert [v.version for v in client.search_model_versions("name = 'digits'")] == ["1"]
        assert client.get_model_version_by_alias("digits", "challenger").version == "1"
    finally:
        stop(proc)


def test_gate_thresholds_and_params_diff():
    from components.config import RegistryConfig
    from components.register import gate
    from components.review import params_diff

    per_class = {"a": {"recall": 0.9}, "b": {"recall": 0.4}}
    good = {"accuracy": 0.9, "per_class": per_class}
    assert gate(good, None, RegistryConfig(min_accuracy=0.8)) == ("passed", [])
    status, reasons = gate(good, {"accuracy": 0.92}, RegistryConfig(min_accuracy=0.8))
    assert status == "failed" and "accuracy_gain_over_champion" in reasons[0]
    status, reasons = gate(good, {"accuracy": 0.85}, RegistryConfig(min_accuracy=0.8, min_class_recall=0.5))
    assert status == "failed" and len(reasons) == 1 and "recall_b" in reasons[0]
    status, _ = gate(good, {"accuracy": 0.92}, RegistryConfig(min_accuracy=0.8, min_improvement=-0.05))
    assert status == "passed"  # a tolerance: slightly worse than the champion is allowed
    assert params_diff({"fine_tune.learning_rate": "0.001", "seed": "1", "effective.x": "1"},
                       {"fine_tune.learning_rate": "0.01", "seed": "1", "effective.x": "2"}) == [
        ("fine_tune.learning_rate", "0.01", "0.001")]


def test_predict_bad_folder_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    from tests.conftest import write_params

    write_params(params, tmp_path / "data")
    done = run_cli("registry", "--params", str(params), "predict", str(tmp_path / "nope"), cwd=tmp_path)
    assert done.returncode == 2 and "not a folder of images" in done.stderr and "Traceback" not in done.stderr

