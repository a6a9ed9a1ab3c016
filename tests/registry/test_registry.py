"""register / review / promote / rollback / status / predict against real MLflow tracking servers on loopback.

Three challengers come from one real fine-tuned model: the model itself, and copies whose output layer can
never predict one or two classes (bias -50). Knocking out a class whose test images the model gets right
costs accuracy, so the three are ordered best > weak > worst on every test set. A fourth, `same`, is the
model itself logged from another training run: an equal challenger the paired comparison cannot tell apart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, run_cli

pytestmark = [pytest.mark.servers, pytest.mark.slow]

REGISTRY = {"model_name": "digits", "min_accuracy": 0.3, "min_improvement": 0.0, "http_retries": 1, "http_timeout": 5}
# The later steps of the tiny project, kept small: they run once per module.
LATER = {
    "tune": {"n_trials": 2, "epochs": 3, "regimes": ["transfer"], "sweep": False},
    "fine_tune": {"epochs": 10, "patience": 4},
}


def start_mlflow(root: Path, port: int, artifacts: str, env: dict) -> subprocess.Popen:
    """`mlflow server` with a SQLite backend (the registry needs SQL); waits for /health."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # Job execution (GenAI background jobs) spawns seven extra worker processes the registry does not use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env}
    proc = subprocess.Popen(
        cmd, env=env, stdout=open(root / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 900
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=900) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
    raise AssertionError("mlflow server did not become healthy: " + (root / "server.log").read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=900)


def run_operator(module: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m operators.<module>` as an operator would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"operators.{module}", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


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


def project_params(project: Path, dest: Path, **registry) -> Path:
    """The project's params with the test registry policy (and `registry` overrides) written to `dest`."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["registry"] = {**REGISTRY, **registry}
    dest.write_text(yaml.safe_dump(raw))
    return dest


@pytest.fixture(scope="module")
def project(tiny_project, tmp_path_factory, s3_mlflow, s3_server):
    """A copy of tiny_project taken through tune, fine_tune and evaluate (the real steps), tracked on the S3
    server: models/fine_tune, reports/tune and reports/evaluate exist."""
    import keras

    from pipelines.local import run_steps

    root = tmp_path_factory.mktemp("registry-project") / "project"
    shutil.copytree(tiny_project, root)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in LATER.items():
        raw[section] = {**raw.get(section, {}), **values}
    raw["tune"]["storage"] = f"sqlite:///{root / 'optuna.db'}"
    raw["registry"] = dict(REGISTRY)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {"MLFLOW_TRACKING_URI": s3_mlflow, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run_steps(root, ["tune", "fine_tune", "train_scratch", "evaluate"])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        keras.backend.clear_session()
    for folder in ("models/fine_tune", "reports/tune", "reports/evaluate"):
        assert (root / folder).is_dir(), folder
    return root


def knock_out(model_dir: Path, classes_off: list[int], dest: Path, params_file: Path, uri: str, subset: Path) -> Path:
    """A copy of a fine-tuned model that never predicts `classes_off`, logged as its own MLflow run."""
    import keras

    import components.fine_tune as fine_tune_step
    import tlpipe.data.augmentation  # noqa: F401 - registers the custom augmentation layer
    from tlpipe.contracts import MODEL_FILE, TrainedModel
    from tlpipe.data.datasets import load_split
    from tlpipe.step_params import load_step_params
    from tlpipe.tracking.runs import log_keras_model, step_run

    model = keras.saving.load_model(model_dir / MODEL_FILE, safe_mode=True)
    output = [lay for lay in model._flatten_layers() if lay.name == "head_output"][0]
    kernel, bias = output.get_weights()
    bias[classes_off] = -50.0
    output.set_weights([kernel, bias])
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        params = load_step_params(params_file, "fine_tune", fine_tune_step.PARAMS)
        info = TrainedModel.read(model_dir)
        with step_run(params, "fine_tune") as run:
            x_val, _, _ = load_split(subset, "val", params.model.image_size)
            model_uri = log_keras_model(model, x_val)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    dest.mkdir(parents=True)
    model.save(dest / MODEL_FILE)
    info.model_copy(update={"run_id": run.info.run_id, "model_uri": model_uri}).write(dest)
    return dest


@pytest.fixture(scope="module")
def challengers(project, tmp_path_factory, s3_mlflow, s3_server):
    """best (the real fine_tune step's model), weak (one class off), worst (two classes off) and same (best
    itself from another training run): model folders."""
    root = tmp_path_factory.mktemp("challengers")
    params = project_params(project, root / "params.yaml")
    env = {"MLFLOW_TRACKING_URI": s3_mlflow, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    best = project / "models/fine_tune"
    subset = project / "data/subset"
    return {
        "params": params,
        "env": env,
        "best": best,
        "weak": knock_out(best, [0], root / "weak", params, s3_mlflow, subset),
        "worst": knock_out(best, [0, 1], root / "worst", params, s3_mlflow, subset),
        "same": knock_out(best, [], root / "same", params, s3_mlflow, subset),
    }


def register(project, c, which: str, out: Path, params: Path | None = None):
    return run_cli(
        "register",
        "--params",
        str(params or c["params"]),
        "--model",
        str(c[which]),
        "--evaluation",
        str(project / "reports/evaluate"),
        "--subset",
        str(project / "data/subset"),
        "--validation",
        str(project / "data/validation"),
        "--tuning",
        str(project / "reports/tune"),
        "--registration",
        str(out),
        cwd=project,
        env=c["env"],
    )


def registry(project, c, *args: str, cwd: Path | None = None):
    return run_operator("registry", "--params", str(c["params"]), *args, cwd=cwd or project, env=c["env"])


def assert_comparison(registration) -> None:
    """With a champion, the paired comparison is recorded: McNemar's p and the gain's 95% CI."""
    comparison = registration.comparison
    assert comparison is not None
    assert 0.0 <= comparison["mcnemar_p"] <= 1.0
    low_high = comparison["gain_ci95"]
    assert len(low_high) == 2 and all(isinstance(v, (int, float)) for v in low_high) and low_high[0] <= low_high[1]
    assert isinstance(comparison["fixed"], int) and isinstance(comparison["broken"], int)


def test_lifecycle_first_better_worse_promote_rollback(project, challengers, tmp_path):
    import mlflow

    from tlpipe.contracts import Registration

    c = challengers
    client = mlflow.MlflowClient(c["env"]["MLFLOW_TRACKING_URI"], c["env"]["MLFLOW_TRACKING_URI"])

    # 1. The first model: no champion to compare with; the accuracy floor alone decides.
    first = register(project, c, "weak", tmp_path / "r1")
    assert first.returncode == 0, first.stderr[-3000:]
    r1 = Registration.read(tmp_path / "r1")
    assert (r1.version, r1.validation_status, r1.champion_version) == ("1", "passed", None)
    assert r1.comparison is None
    assert client.get_model_version_by_alias("digits", "challenger").version == "1"
    v1 = client.get_model_version("digits", "1")
    for tag in (
        "git_commit",
        "test_accuracy",
        "backbone",
        "freeze_ratio",
        "learning_rate",
        "test_set_sha256",
        "data_validation",
        "classes",
        "training_run_id",
    ):
        assert tag in v1.tags, tag
    assert "fine-tuned with freeze ratio" in (v1.description or "")
    with pytest.raises(Exception, match="alias"):
        client.get_model_version_by_alias("digits", "champion")  # register never promotes by itself

    # The artifacts went to the S3 bucket through the server.
    import boto3

    s3 = boto3.client("s3", endpoint_url=c["env"]["MLFLOW_S3_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow-art").get("Contents", [])]
    assert any(k.endswith("evidence/gate.json") for k in keys)

    promoted = registry(project, c, "promote", "1", "--reason", "first model")
    assert promoted.returncode == 0, promoted.stderr
    assert client.get_model_version_by_alias("digits", "champion").version == "1"

    # 2. A worse challenger fails the gate against the champion on the same test set; promote refuses it.
    worse = register(project, c, "worst", tmp_path / "r2")
    assert worse.returncode == 0, worse.stderr[-3000:]
    r2 = Registration.read(tmp_path / "r2")
    assert r2.validation_status == "failed" and r2.champion_version == "1"
    assert r2.champion_test_accuracy is not None and r2.comparison is not None
    assert r2.test_accuracy < r2.champion_test_accuracy
    assert any("accuracy_gain_over_champion" in reason for reason in r2.reasons)
    assert_comparison(r2)
    assert r2.comparison["gain_ci95"][0] < 0 or r2.comparison["broken"] > r2.comparison["fixed"]
    assert client.get_model_version("digits", r2.version).tags["validation_status"] == "failed"
    refused = registry(project, c, "promote", r2.version, "--reason", "try")
    assert refused.returncode == 2 and "validation_status=failed" in refused.stderr
    assert "FORCE=1" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert client.get_model_version_by_alias("digits", "champion").version == "1"

    # 3. A better challenger passes; promote moves @champion and keeps the old one as @previous.
    better = register(project, c, "best", tmp_path / "r3")
    assert better.returncode == 0, better.stderr[-3000:]
    r3 = Registration.read(tmp_path / "r3")
    assert r3.champion_test_accuracy is not None and r3.comparison is not None
    assert r3.validation_status == "passed" and r3.test_accuracy > r3.champion_test_accuracy
    assert_comparison(r3)
    assert r3.comparison["fixed"] > r3.comparison["broken"]

    # 3b. The review of the challenger, before the promotion decision: one HTML with every section and
    # embedded images, logged on the version.
    review = run_operator(
        "review",
        "--params",
        str(c["params"]),
        "--version",
        "@challenger",
        "--out",
        str(tmp_path / "review"),
        cwd=project,
        env=c["env"],
    )
    assert review.returncode == 0, review.stderr[-3000:]
    page = (tmp_path / "review/review.html").read_text()
    for section in (
        "summary",
        "metrics",
        "per-class",
        "confusion",
        "mistakes",
        "training",
        "tuning",
        "lineage",
        "params",
    ):
        assert f"id='{section}'" in page, section
    # Both confusion matrices and the training curves, plus the mistakes grid unless there are none.
    perfect = r3.test_accuracy == 1.0
    assert page.count("data:image/png;base64,") >= (3 if perfect else 4)
    assert ("every test image right" in page) == perfect
    assert "Gate: **passed**" in (tmp_path / "review/review.md").read_text()
    assert client.get_model_version("digits", r3.version).tags["review_artifact"].endswith("review.html")

    promoted = registry(project, c, "promote", "@challenger", "--reason", "better on the same test set")
    assert promoted.returncode == 0, promoted.stderr
    assert client.get_model_version_by_alias("digits", "champion").version == r3.version
    assert client.get_model_version_by_alias("digits", "previous").version == "1"
    tags = client.get_model_version("digits", r3.version).tags
    assert tags["promoted_reason"] == "better on the same test set" and tags["promoted_by"]

    # 3c. An equal challenger (the champion's model from another training run) under
    # registry.require_significant: no gain the test set can show, so the gate fails and says why.
    strict = project_params(project, tmp_path / "strict.yaml", require_significant=True)
    equal = register(project, c, "same", tmp_path / "r3c", params=strict)
    assert equal.returncode == 0, equal.stderr[-3000:]
    r3c = Registration.read(tmp_path / "r3c")
    assert r3c.champion_version == r3.version and r3c.test_accuracy == r3c.champion_test_accuracy
    assert_comparison(r3c)
    assert r3c.comparison is not None and (r3c.comparison["fixed"], r3c.comparison["broken"]) == (0, 0)
    assert r3c.validation_status == "failed" and r3c.version not in (r3.version, "1", r2.version)
    assert any("require_significant" in reason for reason in r3c.reasons), r3c.reasons
    assert not any("accuracy_gain_over_champion" in reason for reason in r3c.reasons)  # gain 0 >= 0 alone passes

    # 4. Re-registering the same training run reuses its version.
    again = register(project, c, "best", tmp_path / "r4")
    assert again.returncode == 0, again.stderr[-3000:]
    r4 = Registration.read(tmp_path / "r4")
    assert r4.version == r3.version and r4.reused
    assert len(client.search_model_versions("name = 'digits'")) == 4

    # 5. Rollback returns @champion to @previous; status lists every version with its aliases.
    rolled = registry(project, c, "rollback", "--reason", "drift in production")
    assert rolled.returncode == 0, rolled.stderr
    assert client.get_model_version_by_alias("digits", "champion").version == "1"
    status = registry(project, c, "status")
    assert status.returncode == 0 and "@champion" in status.stdout and "failed" in status.stdout

    # 6. Forced promotion needs a reason and records it.
    forced = registry(project, c, "promote", r2.version, "--reason", "hotfix for class 9", "--force")
    assert forced.returncode == 0, forced.stderr
    assert client.get_model_version("digits", r2.version).tags["promoted_forced"] == "true"

    # 7. predict runs @champion over a folder and writes a CSV with one row per image: a CMYK JPEG is
    # converted and predicted, a text file named .png gets its reason instead of failing the run. Without
    # --out the CSV goes to reports/predict/predictions.csv under the working folder.
    from PIL import Image

    from tlpipe.contracts import SHARDS_DIR
    from tlpipe.data.records import records

    images = tmp_path / "mine"  # the test images as a user's folder of files (<class>/<name>)
    for rel, data in records(sorted((project / "data/subset" / SHARDS_DIR).glob("test-*.tfrecord"))):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
    Image.open(next(images.rglob("*.png"))).convert("CMYK").save(images / "cmyk.jpg")
    (images / "notes.png").write_text("not an image")
    workdir = tmp_path / "operator"
    workdir.mkdir()
    pred = registry(project, c, "predict", str(images), cwd=workdir)
    assert pred.returncode == 0, pred.stderr[-3000:]
    out = workdir / "reports/predict/predictions.csv"
    import pandas as pd

    frame = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert len(frame) == len(list(images.rglob("*.png"))) + 1
    assert frame.loc[str(images / "notes.png"), "error"].startswith("not an image")
    assert frame.loc[str(images / "cmyk.jpg"), "predicted"] != "" and frame.loc[str(images / "cmyk.jpg"), "error"] == ""
    assert (frame.drop(index=str(images / "notes.png"))["confidence"].astype(float) > 0).all()


def test_tracking_server_down_fails_fast_without_partial_state(project, challengers, tmp_path):
    """A server with local artifacts: one version registered, the server stops, the next register fails in
    bounded time with one line, and after a restart the registry is exactly as before."""
    import mlflow

    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    proc = start_mlflow(root, port, str(root / "artifacts"), {})
    uri = f"http://127.0.0.1:{port}"
    subset = project / "data/subset"
    try:
        c = {
            "params": challengers["params"],
            "env": {"MLFLOW_TRACKING_URI": uri},
            "a": knock_out(challengers["best"], [], tmp_path / "a", challengers["params"], uri, subset),
            "b": knock_out(challengers["best"], [2], tmp_path / "b", challengers["params"], uri, subset),
        }
        first = register(project, c, "a", tmp_path / "r1")
        assert first.returncode == 0, first.stderr[-3000:]
    finally:
        stop(proc)
    started = time.time()
    down = register(project, c, "b", tmp_path / "r2")
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
    import numpy as np

    from tlpipe.reports.gate import gate
    from tlpipe.reports.review import params_diff
    from tlpipe.reports.stats import compare
    from tlpipe.sections import RegistryConfig

    per_class = {"a": {"recall": 0.9}, "b": {"recall": 0.4}}
    good = {"accuracy": 0.9, "per_class": per_class}
    assert gate(good, None, RegistryConfig(min_accuracy=0.8)) == ("passed", [])
    status, reasons = gate(good, {"accuracy": 0.92}, RegistryConfig(min_accuracy=0.8))
    assert status == "failed" and "accuracy_gain_over_champion" in reasons[0]
    status, reasons = gate(good, {"accuracy": 0.85}, RegistryConfig(min_accuracy=0.8, min_class_recall=0.5))
    assert status == "failed" and len(reasons) == 1 and "recall_b" in reasons[0]
    status, _ = gate(good, {"accuracy": 0.92}, RegistryConfig(min_accuracy=0.8, min_improvement=-0.05))
    assert status == "passed"  # a tolerance: slightly worse than the champion is allowed

    # registry.require_significant: the gain's paired 95% CI must lie above min_improvement.
    strict = RegistryConfig(min_accuracy=0.8, require_significant=True)
    unsure = {"fixed": 1, "broken": 1, "mcnemar_p": 1.0, "gain": 0.0, "gain_ci95": [-0.05, 0.05]}
    status, reasons = gate(good, {"accuracy": 0.9}, strict, unsure)
    assert status == "failed" and len(reasons) == 1 and "require_significant" in reasons[0]
    assert gate(good, {"accuracy": 0.9}, RegistryConfig(min_accuracy=0.8), unsure) == ("passed", [])
    clear = {"fixed": 9, "broken": 0, "mcnemar_p": 0.004, "gain": 0.1, "gain_ci95": [0.04, 0.16]}
    assert gate(good, {"accuracy": 0.8}, strict, clear) == ("passed", [])
    assert gate(good, None, strict, None) == ("passed", [])  # no champion: nothing to be significant against
    # An equal challenger, compared by the real paired statistics: the CI is [0, 0], not above 0.
    labels = np.arange(40) % 2
    ok = np.arange(40) % 5 != 0
    equal = compare(ok, ok, labels, ["a", "b"], seed=0)
    assert (equal["fixed"], equal["broken"]) == (0, 0) and 0.0 <= equal["mcnemar_p"] <= 1.0
    assert len(equal["gain_ci95"]) == 2
    status, reasons = gate(good, {"accuracy": 0.9}, strict, equal)
    assert status == "failed" and any("require_significant" in r for r in reasons)

    assert params_diff(
        {"fine_tune.learning_rate": "0.001", "seed": "1", "effective.x": "1"},
        {"fine_tune.learning_rate": "0.01", "seed": "1", "effective.x": "2"},
    ) == [("fine_tune.learning_rate", "0.01", "0.001")]


def test_predict_bad_folder_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    from tests.conftest import write_params

    write_params(params, tmp_path / "data")
    done = run_operator("registry", "--params", str(params), "predict", str(tmp_path / "nope"), cwd=tmp_path)
    assert done.returncode == 2 and "not a folder of images" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def serve(model_uri: str, root: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` on loopback (local environment), polled on /ping until it answers."""
    port = free_port()
    log = open(root / "serve.log", "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900  # a generous cap: loading TensorFlow on a busy machine takes a while
    while time.time() < deadline:
        assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=900) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    stop(proc)
    raise AssertionError("mlflow models serve did not answer /ping: " + (root / "serve.log").read_text()[-3000:])


def test_review_and_promote_against_todays_champion_and_serve_images(project, challengers, tmp_path, monkeypatch):
    """v1, v2 and v3 registered with no champion; v1 promoted after them. The review of v2 and the promotions
    of v2 and v3 compare with v1 (resolved now), on the same test images. The registered model serves images."""
    import base64
    import json

    import mlflow
    import numpy as np

    from tlpipe.contracts import SHARDS_DIR
    from tlpipe.data.records import records

    c = {**challengers, "params": project_params(project, tmp_path / "params.yaml", model_name="today")}
    uri = c["env"]["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri, uri)
    for which, out in (("weak", "r1"), ("best", "r2"), ("worst", "r3")):
        done = register(project, c, which, tmp_path / out)
        assert done.returncode == 0, done.stderr[-3000:]
    assert [client.get_model_version("today", v).tags["validation_status"] for v in "123"] == ["passed"] * 3
    # MLflow conventions: a training experiment (runs table first), the pipeline run carries the outcome, the
    # step runs list their inputs as datasets with content digests.
    reg_run = client.get_run(client.get_model_version("today", "3").tags["register_run_id"])
    assert client.get_experiment(reg_run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.get_run(reg_run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["registered_version"] == "3" and "test_accuracy" in parent.data.metrics
    assert "baseline_scratch_test_accuracy" in parent.data.metrics and parent.data.params["regime"] == "transfer"
    assert parent.info.end_time is not None and reg_run.info.start_time is not None
    assert parent.info.end_time >= reg_run.info.start_time  # the pipeline run lasts until its outcome is known
    # The fine_tune run's params are the values that trained the model; the configured ones are tags.
    trained = client.get_run(client.get_model_version("today", "2").tags["training_run_id"]).data
    assert trained.params["fine_tune.learning_rate"] == trained.params["effective.learning_rate"]
    if "configured.fine_tune.learning_rate" in trained.tags:
        assert trained.tags["configured.fine_tune.learning_rate"] != trained.params["fine_tune.learning_rate"]
    assert any(k.startswith("optimizer_") for k in trained.params)  # mlflow.keras.MlflowCallback logged it
    assert reg_run.inputs is not None
    inputs = {d.dataset.name: d.dataset.digest for d in reg_run.inputs.dataset_inputs}
    assert set(inputs) >= {"subset", "model"} and all(inputs.values())

    promoted = registry(project, c, "promote", "1", "--reason", "first in production")
    assert promoted.returncode == 0, promoted.stderr

    review = run_operator(
        "review",
        "--params",
        str(c["params"]),
        "--version",
        "2",
        "--out",
        str(tmp_path / "review"),
        cwd=project,
        env=c["env"],
    )
    assert review.returncode == 0, review.stderr[-3000:]
    page, md = (tmp_path / "review/review.html").read_text(), (tmp_path / "review/review.md").read_text()
    assert "champion v1" in page and "Since then there is @champion v1" in page, md
    assert "There is no champion to compare with" not in page  # the verdict is about v1 now
    assert "McNemar p" in page and "fixes" in page
    assert re.search(r"pretrained on \S*data/raw/digits/source \(\d+ images", page)  # what it is, not a bare sha
    assert "@champion when this review ran" in page

    refused = registry(project, c, "promote", "3", "--reason", "try")
    assert refused.returncode == 2 and "against the current champion v1" in refused.stderr, refused.stderr
    assert "accuracy_gain_over_champion" in refused.stderr and "Traceback" not in refused.stderr
    ok = registry(project, c, "promote", "2", "--reason", "beats v1 on the same images")
    assert ok.returncode == 0 and "gate passed vs current champion v1" in ok.stdout, ok.stdout + ok.stderr
    assert (
        client.get_model_version("today", "2")
        .tags["promoted_gate"]
        .startswith("passed against the current champion v1")
    )
    forced = registry(project, c, "promote", "3", "--reason", "hotfix", "--force")
    assert forced.returncode == 0 and "FORCED" in forced.stdout, forced.stdout + forced.stderr
    tags = client.get_model_version("today", "3").tags
    assert tags["promoted_forced"] == "true" and tags["promoted_gate"].startswith(
        "failed against the current champion v2"
    )

    # The registered model is a pyfunc that takes images: its input example predicts labels...
    for key, value in c["env"].items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(uri)  # an earlier test in this process may have pointed MLflow elsewhere
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/today@previous")
    out = model.predict(model.input_example)
    classes = json.loads(client.get_model_version("today", "2").tags["classes"])
    assert list(out.columns) == ["label", *classes] and set(out["label"]) <= set(classes)
    # ...and `mlflow models serve` answers a REST call with a real test image (as its file's bytes, base64).
    keras_model = model.unwrap_python_model().model
    from tlpipe.data.datasets import decode_bytes

    shards = sorted((project / "data/subset" / SHARDS_DIR).glob("test-*.tfrecord"))
    right = None
    for rel, data in records(shards):
        probs = keras_model.predict(
            decode_bytes([data], model.unwrap_python_model().size).astype("float32"), verbose=0
        )[0]
        if classes[int(np.argmax(probs))] == Path(rel).parent.name:  # test/<class>/<file>
            right = (rel, data)
            break
    assert right is not None, "the best model gets no test image right"
    proc, url = serve("models:/today/2", tmp_path, c["env"])
    try:
        body = json.dumps(
            {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(right[1]).decode()]]}}
        ).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=900) as answer:
            served = json.loads(answer.read())["predictions"]
    finally:
        stop(proc)
    assert served[0]["label"] == Path(right[0]).parent.name, served
    assert abs(sum(served[0][k] for k in classes) - 1.0) < 1e-4
    print("served prediction:", right[0], served[0])
