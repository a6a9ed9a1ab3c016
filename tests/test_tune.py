import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import optuna
import pytest
import yaml

from components.backbones import cut_points, load_backbone
from components.config import load_params
from components.fine_tune import HyperParams
from components.tune import Worker, create_study, freeze_points, make_storage, study_name, suggest, summarize
from components.tune_trial import ActivationCache, load_trial_data, run_trial
from tests.conftest import REPO, create_database

optuna.logging.set_verbosity(optuna.logging.WARNING)


def params_for(project, tmp_path, **overrides):
    base = {"tune.storage": f"sqlite:///{tmp_path / 'optuna.db'}",
            "tracking.default_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return load_params(project / "params.yaml", {**base, **overrides})


def test_search_space_uses_real_boundaries_within_range(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path, **{"tune.freeze_ratio": [0.2, 0.8]})
    backbone = load_backbone(params.model)
    points = freeze_points(backbone)
    total = len(backbone.layers) - 1
    assert points == [k / total for k in cut_points(backbone)]
    inside = [p for p in points if 0.2 <= p <= 0.8]
    seen = set()
    for index in range(len(inside)):
        trial = optuna.trial.FixedTrial({"freeze_point": index, "learning_rate": 1e-3})
        ratio, lr, dropout, units = suggest(trial, params.tune, points)
        seen.add(ratio)
        assert ratio in points and 0.2 <= ratio <= 0.8 and dropout is None and units is None
    assert seen == set(inside)


def test_cached_trial_equals_full_model_trial(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", tiny_project / "data/augmented/train.npz", 16)
    hp = HyperParams(0.5, 3e-3, 0.0, params.model.head_units)
    head = tiny_project / "models/head.keras"
    results = {}
    runs = (("full", None), ("f32", ActivationCache(tmp_path / "c32", 10**9, "float32")),
            ("f16", ActivationCache(tmp_path / "c16", 10**9, "float16")))
    for name, cache in runs:
        keras.utils.set_random_seed(1)
        backbone = load_backbone(params.model)
        out = run_trial(params, hp, data, backbone, head, cache, "tiny", epochs=2)
        assert out["mode"] == ("full" if cache is None else "cached")
        head_layer = out["model"].get_layer("head")
        results[name] = (backbone.get_weights(), head_layer.get_weights(), out["history"]["val_loss"])
    # float32 cache: the same computation, so the same weights and metrics
    for a, b in zip(results["full"][0] + results["full"][1], results["f32"][0] + results["f32"][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(results["full"][2], results["f32"][2], rtol=1e-5)
    # float16 cache (the default): activations rounded to 11 bits; metrics stay within 2 %
    np.testing.assert_allclose(results["full"][2], results["f16"][2], rtol=0.02)
    assert len(list((tmp_path / "c16").rglob("*.npy"))) == 2


def test_fully_frozen_trial_trains_only_the_head(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", None, 16)
    out = run_trial(params, HyperParams(1.0, 1e-3, 0.1, params.model.head_units), data,
                    load_backbone(params.model), tiny_project / "models/head.keras",
                    ActivationCache(tmp_path / "c", 10**9, "float16"), "x", 1)
    assert out["mode"] == "cached" and out["plan"].effective_ratio == 1.0
    assert all(w.name.startswith("head") or "head" in w.path for w in out["model"].trainable_weights)


def test_cache_cap_falls_back_to_full_model(tiny_project, tmp_path, capsys):
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", None, 16)
    out = run_trial(params, HyperParams(0.5, 1e-3, 0.1, 16), data, load_backbone(params.model),
                    tiny_project / "models/head.keras", ActivationCache(tmp_path / "c", 1000, "float16"), "x", 1)
    assert out["mode"] == "full"
    assert "would exceed tune.cache_max_bytes=1000" in capsys.readouterr().out


def test_pruner_prunes_a_diverging_trial_and_best_params_flow(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path, **{"tune.n_trials": 4, "tune.epochs": 3,
                                                   "tune.learning_rate": [1e-5, 50.0]})
    study = create_study(params)
    for lr in (3e-3, 2e-3, 1e-3):
        study.enqueue_trial({"freeze_point": 1, "learning_rate": lr})
    study.enqueue_trial({"freeze_point": 1, "learning_rate": 50.0})  # diverges: accuracy collapses
    worker = Worker(params, tiny_project / "data/subset", tiny_project / "models/head.keras",
                    tiny_project / "data/augmented/train.npz", tmp_path / "cache")
    import mlflow

    mlflow.set_tracking_uri(params.tracking.default_uri)
    mlflow.set_experiment(params.tracking.experiment)  # not whatever experiment an earlier test left active
    with mlflow.start_run():
        assert worker.work(study) == 4
    states = [t.state.name for t in study.get_trials()]
    assert states[:3] == ["COMPLETE"] * 3 and states[3] == "PRUNED"
    assert study.get_trials()[3].user_attrs["epochs_run"] < 3
    out = tmp_path / "summary"
    out.mkdir()
    summary = summarize(study, out, params)
    for name in ("best_params.json", "trials.csv", "history.png", "importances.png", "transferability.png"):
        assert (out / name).stat().st_size > 0
    hp = HyperParams.from_file(out / "best_params.json", params)
    assert hp.learning_rate == study.best_trial.params["learning_rate"] == summary["params"]["learning_rate"]
    assert hp.freeze_ratio == study.best_trial.user_attrs["freeze_ratio"]


def tune_cmd(params_file, *args):
    return [sys.executable, "-m", "components.tune", *args, "--params", str(params_file)]


def write(params_file, project, **tune):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tune"].update(tune)
    raw["tracking"]["default_uri"] = f"sqlite:///{params_file.parent / 'mlflow.db'}"
    params_file.write_text(yaml.safe_dump(raw))
    return params_file


def trial_args(project, cache):
    return ["--subset", str(project / "data/subset"), "--head", str(project / "models/head.keras"),
            "--augmented", str(project / "data/augmented/train.npz"), "--cache-dir", str(cache)]


def wait_for(predicate, timeout, what, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_tune_step_killed_then_rerun_continues_the_study(tiny_project, tmp_path):
    params_file = write(tmp_path / "params.yaml", tiny_project, n_trials=4, epochs=2, storage=f"sqlite:///{tmp_path}/o.db",
                        heartbeat_interval=1)
    params = load_params(params_file)
    out = tmp_path / "out"
    cmd = tune_cmd(params_file, "run", *trial_args(tiny_project, tmp_path / "cache"), "--out", str(out))
    first = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = lambda: optuna.load_study(study_name=study_name(params), storage=params.tune.storage)  # noqa: E731

    def one_done_one_running():
        try:
            states = [t.state.name for t in study().get_trials()]
        except KeyError:
            return False
        return states.count("COMPLETE") >= 1 and "RUNNING" in states

    wait_for(one_done_one_running, 240, "a finished trial and a running one")
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: t.value for t in study().get_trials() if t.state.name == "COMPLETE"}
    assert not out.exists()
    done = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = study().get_trials()
    assert {t.number: t.value for t in trials if t.number in before} == before  # kept, not redone
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4
    failed = [t for t in trials if t.state.name == "FAIL"]
    # The trial that was running when the step died, marked failed by heartbeat ...
    assert len(failed) == 1, done.stderr[-3000:]
    retried = [optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials]
    assert failed[0].number in retried  # ... and retried
    assert json.loads((out / "best_params.json").read_text())["source"] == "study"


@pytest.mark.slow
@pytest.mark.servers
def test_workers_share_a_postgres_study_and_survive_a_killed_worker(tiny_project, tmp_path, postgres):
    url = create_database(postgres, "optuna_workers")
    pg_url = url.replace("postgresql+psycopg2://app@", "postgresql://")
    # Trials long enough (8 epochs) that worker 1 is surely caught mid-trial by the 0.2 s poll.
    params_file = write(tmp_path / "params.yaml", tiny_project, n_trials=9, epochs=8, storage=pg_url,
                        heartbeat_interval=1, pool_size=2, timeout=None)
    env = {**ENV, "PGUSER": postgres["user"]}  # credentials from the environment, never in params
    created = subprocess.run(tune_cmd(params_file, "create-study"), env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert created.returncode == 0, created.stderr[-2000:]
    os.environ["PGUSER"] = postgres["user"]
    params = load_params(params_file)
    workers = [subprocess.Popen(tune_cmd(params_file, "worker", *trial_args(tiny_project, tmp_path / f"c{i}"),
                                         "--worker-index", str(i)),
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for i in range(3)]
    storage = make_storage(params.tune)  # one engine for all polls: a new one per poll would leak connections
    study = lambda: optuna.load_study(study_name=study_name(params), storage=storage)  # noqa: E731

    def victim_running():
        trials = study().get_trials()
        return any(t.state.name == "RUNNING" and t.user_attrs.get("worker") == 1 for t in trials)

    try:
        wait_for(victim_running, 240, "worker 1 to be mid-trial", interval=0.2)
    except AssertionError:
        for w in workers:
            w.kill()
        states = [(t.number, t.state.name, t.user_attrs.get("worker")) for t in study().get_trials()]
        raise AssertionError(f"worker 1 never seen mid-trial; trials {states}; worker 1 said: "
                             f"{workers[1].communicate()[1][-2000:]}") from None
    workers[1].send_signal(signal.SIGKILL)
    for i in (0, 2):
        _, err = workers[i].communicate(timeout=500)
        assert workers[i].returncode == 0, err[-2000:]
    trials = study().get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") >= 9
    assert "RUNNING" not in states and "WAITING" not in states
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["worker"] == 1
    retried = [optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials]
    assert failed[0].number in retried
    assert {t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"} >= {0, 2}
