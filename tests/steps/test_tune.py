import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import optuna
import pytest
import yaml

from components.fine_tune import hyperparams
from components.make_subset import run as make_subset_run
from components.tune import main as tune_main
from tests.conftest import REPO, create_database
from tlpipe.cli import run_main
from tlpipe.config import load_params
from tlpipe.contracts import BACKBONE_FILE, COPIES_FILE, HEAD_FILE, BestParams, HyperParams
from tlpipe.models.backbones import backbone_identity, cut_points, load_backbone, preprocess_mode
from tlpipe.sections import StorageConfig
from tlpipe.tuning.study import create_study, freeze_points, inside_points, make_storage, suggest
from tlpipe.tuning.trial import ActivationCache, Recipe, load_trial_data, run_trial
from tlpipe.tuning.worker import Defaults, Worker, WorkerSetup, summarize

optuna.logging.set_verbosity(optuna.logging.WARNING)


def params_for(project, tmp_path, **overrides):
    base = {
        "tune.storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "tracking.default_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    return load_params(project / "params.yaml", {**base, **overrides})


def backbone_of(project) -> str:
    """The backbone input as the steps get it: pretrain_backbone's folder."""
    return str(project / "models/backbone")


def load(project, params):
    return load_backbone(backbone_of(project), params.model.weights, params.model.image_size)


def recipe(project, params, epochs=None) -> Recipe:
    """What every trial shares, as the tune step builds it."""
    return Recipe(
        seed=params.seed,
        image_size=params.model.image_size,
        preprocess=preprocess_mode(backbone_of(project)),
        batch_size=params.fine_tune.batch_size,
        epochs=epochs or params.tune.epochs,
        patience=params.tune.patience,
        monitor=params.tune.metric,
    )


def hp_of(freeze_ratio, learning_rate, dropout, head_units) -> HyperParams:
    return HyperParams(freeze_ratio=freeze_ratio, learning_rate=learning_rate, dropout=dropout, head_units=head_units)


def worker_for(project, params, cache_dir, cfg=None, epochs=None) -> Worker:
    """A tune worker on the tiny project, set up as the tune step sets it up (`cfg`: params.tune by default)."""
    model = params.model
    return Worker(
        WorkerSetup(
            cfg=cfg or params.tune,
            recipe=recipe(project, params, epochs=epochs),
            defaults=Defaults(model.dropout, model.head_units),
            subset=project / "data/subset",
            head=project / "models/head" / HEAD_FILE,
            augmented=project / "data/augmented",
            cache_dir=cache_dir,
            load_backbone=lambda: load(project, params),
            identity=backbone_identity(backbone_of(project), model.weights, model.image_size),
        )
    )


def test_search_space_uses_real_boundaries_within_range(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path, **{"tune.freeze_ratio": [0.2, 0.8]})
    backbone = load(tiny_project, params)
    points = freeze_points(backbone)
    total = len(backbone.layers) - 1
    assert points == [k / total for k in cut_points(backbone)]
    inside = [p for p in points if 0.2 <= p <= 0.8]
    seen = set()
    for index in range(len(inside)):
        trial = optuna.trial.FixedTrial(
            {"freeze_ratio": round(inside[index], 4), "learning_rate": 1e-3, "train_bn": False}
        )
        hp = suggest(trial, params.tune, points, ["transfer"])
        ratio = hp["freeze_ratio"]
        seen.add(ratio)
        assert ratio in points and 0.2 <= ratio <= 0.8 and "dropout" not in hp and "head_units" not in hp
    assert seen == set(inside)
    # from scratch there is no boundary to choose: nothing frozen, BatchNormalization trains
    trial = optuna.trial.FixedTrial({"regime": "scratch", "learning_rate": 1e-3})
    assert suggest(trial, params.tune, points, ["transfer", "scratch"])["freeze_ratio"] == 0.0


def test_cached_trial_equals_full_model_trial(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", tiny_project / "data/augmented", 16)
    assert len(data.variants) == 2  # the original split + augment.copies = 1 pre-augmented copy
    hp = hp_of(0.5, 3e-3, 0.0, params.model.head_units)
    head = tiny_project / "models/head" / HEAD_FILE
    results = {}
    runs = (
        ("full", None),
        ("f32", ActivationCache(tmp_path / "c32", 10**9, "float32")),
        ("f16", ActivationCache(tmp_path / "c16", 10**9, "float16")),
    )
    for name, cache in runs:
        keras.utils.set_random_seed(1)
        backbone = load(tiny_project, params)
        out = run_trial(recipe(tiny_project, params, epochs=2), hp, data, backbone, head, cache, "tiny")
        assert out["mode"] == ("full" if cache is None else "cached")
        head_layer = out["model"].get_layer("head")
        results[name] = (backbone.get_weights(), head_layer.get_weights(), out["history"]["val_loss"])
    # float32 cache: the same computation, so the same weights and metrics
    for a, b in zip(results["full"][0] + results["full"][1], results["f32"][0] + results["f32"][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(results["full"][2], results["f32"][2], rtol=1e-5)
    # float16 cache (the default): activations rounded to 11 bits; over 2 epochs on this tiny project's draw of
    # images the validation loss moves by up to ~4.4 % (measured), so the bound is 6 %
    np.testing.assert_allclose(results["full"][2], results["f16"][2], rtol=0.06)
    from tlpipe.models.backbones import cut_points

    boundaries = [k for k in cut_points(load(tiny_project, params)) if k >= out["plan"].frozen]
    # train and val at the trial's boundary and every deeper one, written in the trial's one pass
    assert len(list((tmp_path / "c16").rglob("*.npy"))) == 2 * len(boundaries) > 2


def test_streamed_trial_data_computes_what_the_in_memory_data_does(tiny_project, tmp_path):
    """Large sets (decoded to scratch .npy files, read back a batch at a time) give the same activations and,
    trained on them, the same kind of trial; the scratch files go with the data."""
    from tlpipe.data.arrays import NpyRows

    params = params_for(tiny_project, tmp_path)
    args = (tiny_project / "data/subset", tiny_project / "data/augmented", 16)
    memory, stream = load_trial_data(*args, mode="memory"), load_trial_data(*args, mode="stream")
    assert memory.fingerprint == stream.fingerprint and len(stream.variants) == len(memory.variants) == 2
    assert all(isinstance(v, NpyRows) for v in stream.variants) and isinstance(stream.val_images, NpyRows)
    for a, b in zip(memory.variants + [memory.val_images], stream.variants + [stream.val_images], strict=True):
        np.testing.assert_array_equal(a, b.load())
    hp = hp_of(0.5, 3e-3, 0.0, params.model.head_units)
    head = tiny_project / "models/head" / HEAD_FILE
    histories = {}
    for name, data in (("memory", memory), ("stream", stream)):
        cache = ActivationCache(tmp_path / f"cache-{name}", 10**9, "float32")
        out = run_trial(
            recipe(tiny_project, params, epochs=2), hp, data, load(tiny_project, params), head, cache, "tiny"
        )
        assert out["mode"] == "cached"
        histories[name] = out["history"]
        entries = sorted((tmp_path / f"cache-{name}").iterdir())  # every boundary, from the trial's one pass
        assert cache.key("tiny", out["plan"].frozen, data.fingerprint) in [e.name for e in entries]
        histories[name + "_activations"] = [np.load(entry / "train.npy") for entry in entries]
    for a, b in zip(histories["memory_activations"], histories["stream_activations"], strict=True):
        np.testing.assert_array_equal(a, b)
    # the same images and activations; the batches are shuffled by a different (seeded) generator on disk
    assert len(histories["stream"]["val_loss"]) == 2 and np.isfinite(histories["stream"]["val_loss"]).all()
    assert abs(histories["stream"]["val_accuracy"][-1] - histories["memory"]["val_accuracy"][-1]) <= 0.35
    scratch = stream.variants[0].path.parent
    assert scratch.is_dir()
    del stream, out, data
    import gc

    gc.collect()
    assert not scratch.exists()


def test_fully_frozen_trial_trains_only_the_head(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", None, 16)
    out = run_trial(
        recipe(tiny_project, params, epochs=1),
        hp_of(1.0, 1e-3, 0.1, params.model.head_units),
        data,
        load(tiny_project, params),
        tiny_project / "models/head" / HEAD_FILE,
        ActivationCache(tmp_path / "c", 10**9, "float16"),
        "x",
    )
    assert out["mode"] == "cached" and out["plan"].effective_ratio == 1.0
    assert all(w.name.startswith("head") or "head" in w.path for w in out["model"].trainable_weights)


def test_cache_disk_budget_falls_back_to_full_model_in_one_line(tiny_project, tmp_path, capsys):
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", None, 16)
    cache = ActivationCache(tmp_path / "c", 1000, "float16", disk_bytes=1000)
    backbone = load(tiny_project, params)
    out = run_trial(
        recipe(tiny_project, params, epochs=1),
        hp_of(0.5, 1e-3, 0.1, 16),
        data,
        backbone,
        tiny_project / "models/head" / HEAD_FILE,
        cache,
        "x",
    )
    assert out["mode"] == "full" and not (tmp_path / "c").exists()
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "cache_disk_bytes" in x]
    shape = backbone.layers[out["plan"].frozen].output.shape[1:]
    needed = data.images * int(np.prod(shape)) * 2
    assert f"need {needed / 2**30:.2f} GiB on disk in {tmp_path / 'c'}" in line
    assert "tune.cache_disk_bytes=1000" in line and "trains the full model" in line


def test_pruner_prunes_a_diverging_trial_and_best_params_flow(tiny_project, tmp_path):
    params = params_for(
        tiny_project, tmp_path, **{"tune.n_trials": 4, "tune.epochs": 3, "tune.learning_rate": [1e-5, 50.0]}
    )
    study = create_study(params.tune, "prune-test", params.seed)
    # Three sane reference trials. They are the same point, so none of them lags the median. Their rate is one
    # that learns from the first epoch under the trial's seeded batch order (3e-3 stays at chance for two epochs
    # with the order of tlpipe.tuning.batches.epoch_order; 1e-3: 0.57 / 0.50 / 0.77 validation accuracy).
    inside = inside_points(params.tune, freeze_points(load(tiny_project, params)))
    point = {"regime": "transfer", "freeze_ratio": round(inside[1], 4), "train_bn": False}
    for _ in range(3):
        study.enqueue_trial({**point, "learning_rate": 1e-3})
    study.enqueue_trial({**point, "learning_rate": 50.0})  # diverges: accuracy collapses
    worker = worker_for(tiny_project, params, tmp_path / "cache")
    import mlflow

    mlflow.set_tracking_uri(params.tracking.default_uri)
    mlflow.set_experiment(params.tracking.experiment)  # not whatever experiment an earlier test left active
    with mlflow.start_run() as parent:
        ran, timed_out = worker.work(study)
    assert not timed_out  # the budget is the trial count; no clock stopped it
    states = [t.state.name for t in study.get_trials()]
    assert states[:3] == ["COMPLETE"] * 3 and states[3] == "PRUNED"
    assert study.metric_names == [params.tune.metric]  # named in optuna-dashboard, not "Objective 0"
    assert "freeze_ratio" in study.trials[0].params  # the searched param has the name used everywhere
    # A pruned trial is a FINISHED MLflow run tagged optuna.state=pruned, not a red FAILED one.
    runs = mlflow.search_runs(filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", output_format="list")
    by_state = sorted((r.data.tags["optuna.state"], r.info.status) for r in runs)
    assert by_state == [("complete", "FINISHED")] * 3 + [("pruned", "FINISHED")], by_state
    assert study.get_trials()[3].user_attrs["epochs_run"] < 3
    out = tmp_path / "summary"
    out.mkdir()
    summary = summarize(study, params.tune, out, "n_trials")
    for name in (BestParams.FILE, "trials.csv", "history.png", "importances.png", "transferability.png"):
        assert (out / name).stat().st_size > 0
    assert BestParams.read(out) == summary and summary.states == {"COMPLETE": 3, "PRUNED": 1}
    hp = hyperparams(BestParams.read(out), params.fine_tune, params.model.dropout, params.model.head_units)
    assert summary.params is not None
    assert hp.learning_rate == study.best_trial.params["learning_rate"] == summary.params.learning_rate
    assert hp.freeze_ratio == study.best_trial.user_attrs["freeze_ratio"]
    assert ran == 4  # this worker ran the four (enqueued) trials

    # `make study` prints the stored name; optuna.load_study opens it with that name.
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "operators.study",
            "--params",
            str(tiny_project / "params.yaml"),
            "--tuning",
            str(out),
            "--storage",
            params.tune.storage,
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    found = re.search(r'study_name="([^"]+)"', shown.stdout)
    assert found, shown.stdout
    name = found.group(1)
    assert name == study.study_name and "optuna-dashboard" in shown.stdout
    loaded = optuna.load_study(study_name=name, storage=params.tune.storage)
    assert len(loaded.trials) == 4 and loaded.metric_names == [params.tune.metric]


def tune_cmd(params_file, *args):
    return [sys.executable, "-m", "components.tune", *args, "--params", str(params_file)]


def write(params_file, project, **tune):
    """The tiny project's params with `tune` changes. The transferability sweep after the study (extra
    trainings, not part of the study) is off unless asked for: these tests are about the study."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tune"].update({"sweep": False, **tune})
    raw["tracking"]["default_uri"] = f"sqlite:///{params_file.parent / 'mlflow.db'}"
    params_file.write_text(yaml.safe_dump(raw))
    return params_file


def trial_args(project, cache, **inputs):
    """The step's folder flags, as in dvc.yaml; `inputs` replace some (subset=..., backbone=...)."""
    folders = {
        "subset": project / "data/subset",
        "augmented": project / "data/augmented",
        "head": project / "models/head",
        "backbone": project / "models/backbone",
        **inputs,
    }
    return [part for flag, path in folders.items() for part in (f"--{flag}", str(path))] + ["--cache-dir", str(cache)]


def tune_in_process(capsys, params_file, *args) -> str:
    """Run `python -m components.tune ARGS` in this process; returns what it printed."""
    capsys.readouterr()
    run_main(tune_main, [*args, "--params", str(params_file)])
    return capsys.readouterr().out


def study_for(capsys, params_file, project, tmp_path, **inputs) -> str:
    """The study `tune create-study` makes (or finds) for these inputs: its name."""
    out = tune_in_process(capsys, params_file, "create-study", *trial_args(project, tmp_path / "cache", **inputs))
    found = re.search(r"tune: study (\S+) ready", out)
    assert found, out
    return found.group(1)


def wait_for(predicate, timeout, what, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_tune_step_killed_then_rerun_continues_the_study(tiny_project, tmp_path, capsys):
    params_file = write(
        tmp_path / "params.yaml",
        tiny_project,
        n_trials=4,
        epochs=2,
        storage=f"sqlite:///{tmp_path}/o.db",
        heartbeat_interval=1,
    )
    params = load_params(params_file)
    name = study_for(capsys, params_file, tiny_project, tmp_path)
    out = tmp_path / "out"
    cmd = tune_cmd(params_file, "run", *trial_args(tiny_project, tmp_path / "cache"), "--tuning", str(out))
    first = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = lambda: optuna.load_study(study_name=name, storage=params.tune.storage)  # noqa: E731

    def one_done_one_running():
        try:
            states = [t.state.name for t in study().get_trials()]
        except KeyError:
            return False
        return states.count("COMPLETE") >= 1 and "RUNNING" in states

    wait_for(one_done_one_running, 900, "a finished trial and a running one")
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: t.value for t in study().get_trials() if t.state.name == "COMPLETE"}
    assert not out.exists()
    done = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=900)
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
    best = BestParams.read(out)
    assert best.source == "study" and best.study_name == name and best.stopped_by == "n_trials"
    assert optuna.get_all_study_names(params.tune.storage) == [name]  # the rerun continued the same study


@pytest.mark.slow
@pytest.mark.servers
def test_workers_share_a_postgres_study_and_survive_a_killed_worker(tiny_project, tmp_path, postgres):
    url = create_database(postgres, "optuna_workers")
    pg_url = url.replace("postgresql+psycopg2://app@", "postgresql://")
    # Trials long enough (8 epochs) that worker 1 is surely caught mid-trial by the 0.2 s poll. No pruner: every
    # trial runs to its end, so each surviving worker's share shows as COMPLETE trials (with the median pruner
    # and the scratch regime in the search, a worker's few trials could all be pruned).
    params_file = write(
        tmp_path / "params.yaml",
        tiny_project,
        n_trials=9,
        epochs=8,
        storage=pg_url,
        heartbeat_interval=1,
        pool_size=2,
        timeout=None,
        pruner="none",
    )
    env = {**ENV, "PGUSER": postgres["user"]}  # credentials from the environment, never in params
    created = subprocess.run(
        tune_cmd(params_file, "create-study", *trial_args(tiny_project, tmp_path / "cache")),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert created.returncode == 0, created.stderr[-2000:]
    found = re.search(r"tune: study (\S+) ready", created.stdout)
    assert found, created.stdout
    name = found.group(1)
    os.environ["PGUSER"] = postgres["user"]
    params = load_params(params_file)
    workers = [
        subprocess.Popen(
            tune_cmd(params_file, "worker", *trial_args(tiny_project, tmp_path / f"c{i}"), "--worker-index", str(i)),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    storage = make_storage(params.tune)  # one engine for all polls: a new one per poll would leak connections
    study = lambda: optuna.load_study(study_name=name, storage=storage)  # noqa: E731

    def victim_running():
        trials = study().get_trials()
        return any(t.state.name == "RUNNING" and t.user_attrs.get("worker") == 1 for t in trials)

    try:
        wait_for(victim_running, 900, "worker 1 to be mid-trial", interval=0.2)
    except AssertionError:
        for w in workers:
            w.kill()
        states = [(t.number, t.state.name, t.user_attrs.get("worker")) for t in study().get_trials()]
        raise AssertionError(
            f"worker 1 never seen mid-trial; trials {states}; worker 1 said: {workers[1].communicate()[1][-2000:]}"
        ) from None
    workers[1].send_signal(signal.SIGKILL)
    for i in (0, 2):
        _, err = workers[i].communicate(timeout=900)
        assert workers[i].returncode == 0, err[-2000:]
    trials = study().get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") >= 9
    assert "RUNNING" not in states and "WAITING" not in states
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["worker"] == 1
    retried = [optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials]
    assert failed[0].number in retried
    by_worker = [(t.number, t.user_attrs.get("worker"), t.state.name, t.user_attrs.get("epochs_run")) for t in trials]
    assert {t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"} >= {0, 2}, by_worker


def changed_copy(folder, target, filename):
    """A copy of a model folder whose model file has other weights (other bytes, same architecture)."""
    shutil.copytree(folder, target)
    model = keras.saving.load_model(target / filename, compile=False, safe_mode=True)
    weights = model.get_weights()
    weights[0] = weights[0] + 0.01
    model.set_weights(weights)
    model.save(target / filename)
    return target


def test_study_identity_follows_data_backbone_head_and_search_space(tiny_project, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    params_file = write(tmp_path / "params.yaml", tiny_project, storage=storage)
    params = load_params(params_file)
    base = study_for(capsys, params_file, tiny_project, tmp_path)
    assert base.startswith(f"{params.tune.study_name}-") and base != params.tune.study_name

    # identical inputs: the same study (found again, not made anew), wherever the folders are
    assert study_for(capsys, params_file, tiny_project, tmp_path) == base
    shutil.copytree(tiny_project / "models/backbone", tmp_path / "same_backbone")
    assert study_for(capsys, params_file, tiny_project, tmp_path, backbone=tmp_path / "same_backbone") == base
    # how long and where a study runs is not what a trial computes: raising the budget continues the study
    budget = write(
        tmp_path / "budget.yaml",
        tiny_project,
        storage=storage,
        n_trials=50,
        timeout=900,
        heartbeat_interval=5,
        max_retries=1,
    )
    assert study_for(capsys, budget, tiny_project, tmp_path) == base

    # (a) other training data: make_subset picks other images with another seed
    make_subset_run(
        str(tiny_project / "data/raw/digits/target"),
        params.data.layout,
        params.make_subset.model_copy(update={"seed": params.make_subset.seed + 1}),
        StorageConfig(),
        tmp_path / "subset2",
    )
    other_data = study_for(capsys, params_file, tiny_project, tmp_path, subset=tmp_path / "subset2")
    # ... or other pre-augmented copies of the same split
    shutil.copytree(tiny_project / "data/augmented", tmp_path / "augmented2")
    copies = np.load(tmp_path / "augmented2" / COPIES_FILE)
    np.save(tmp_path / "augmented2" / COPIES_FILE, np.ascontiguousarray(copies[:, ::-1]))  # every copy flipped
    other_copies = study_for(capsys, params_file, tiny_project, tmp_path, augmented=tmp_path / "augmented2")
    # (b) the backbone file's bytes changed (same architecture, other weights)
    changed = changed_copy(tiny_project / "models/backbone", tmp_path / "backbone2", BACKBONE_FILE)
    other_backbone = study_for(capsys, params_file, tiny_project, tmp_path, backbone=changed)
    # ... or the warm-start head
    head = changed_copy(tiny_project / "models/head", tmp_path / "head2", HEAD_FILE)
    other_head = study_for(capsys, params_file, tiny_project, tmp_path, head=head)
    # (c) the search space changed
    space = write(tmp_path / "space.yaml", tiny_project, storage=storage, learning_rate=[1e-4, 1e-2])
    other_space = study_for(capsys, space, tiny_project, tmp_path)
    freeze = write(tmp_path / "freeze.yaml", tiny_project, storage=storage, freeze_ratio=[0.0, 0.5])
    other_freeze = study_for(capsys, freeze, tiny_project, tmp_path)

    names = [base, other_data, other_copies, other_backbone, other_head, other_space, other_freeze]
    assert len(set(names)) == len(names), names
    assert sorted(optuna.get_all_study_names(storage)) == sorted(names)  # one study per identity, none mixed


def test_rerun_with_the_same_inputs_runs_no_trial_and_keeps_the_best(tiny_project, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    params_file = write(tmp_path / "params.yaml", tiny_project, n_trials=2, epochs=1, storage=storage, timeout=None)
    args = trial_args(tiny_project, tmp_path / "cache")

    printed = tune_in_process(capsys, params_file, "run", *args, "--tuning", str(tmp_path / "t1"))
    assert "worker 0 ran 2 trials" in printed and "timeout" not in printed
    first = BestParams.read(tmp_path / "t1")
    assert first.source == "study" and sum(first.states.values()) == 2 and first.stopped_by == "n_trials"

    printed = tune_in_process(capsys, params_file, "run", *args, "--tuning", str(tmp_path / "t2"))
    assert "worker 0 ran 0 trials" in printed  # the study is finished: resumed, nothing to do
    assert BestParams.read(tmp_path / "t2") == first  # same study, same best trial, value and params

    # other backbone bytes: another study, whose trials run afresh and never mix with the first study's
    changed = changed_copy(tiny_project / "models/backbone", tmp_path / "backbone2", BACKBONE_FILE)
    printed = tune_in_process(
        capsys,
        params_file,
        "run",
        *trial_args(tiny_project, tmp_path / "cache", backbone=changed),
        "--tuning",
        str(tmp_path / "t3"),
    )
    assert "worker 0 ran 2 trials" in printed
    other = BestParams.read(tmp_path / "t3")
    assert other.study_name != first.study_name
    assert sorted(optuna.get_all_study_names(storage)) == sorted([first.study_name, other.study_name])
    assert len(optuna.load_study(study_name=first.study_name, storage=storage).trials) == 2
