"""A kept trial model trains exactly like a fresh one (tlpipe/tuning/reuse.py), in both paths and both regimes."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from tests.steps.test_tune import hp_of, load, params_for, recipe, worker_for
from tlpipe.contracts import HEAD_FILE
from tlpipe.tuning.reuse import ModelPool
from tlpipe.tuning.trial import ActivationCache, load_trial_data, run_trial


def _trial(project, params, data, hp, cache, pool, epochs=3, callbacks=()):
    return run_trial(
        recipe(project, params, epochs=epochs),
        hp,
        data,
        lambda: load(project, params),
        project / "models/head" / HEAD_FILE,
        cache,
        "tiny",
        callbacks=callbacks,
        pool=pool,
    )


@pytest.mark.parametrize(
    "hp_args",
    [
        ("transfer", 0.5, False),  # cached activations
        ("transfer", 0.0, True),  # the full model, BatchNorm training
        ("scratch", 0.0, True),  # a fresh backbone and head
    ],
)
def test_a_reused_model_trains_bit_for_bit_like_a_fresh_one(tiny_project, tmp_path, hp_args):
    import keras

    regime, ratio, train_bn = hp_args
    params = params_for(tiny_project, tmp_path)
    data = load_trial_data(tiny_project / "data/subset", tiny_project / "data/augmented", 16)
    cache = ActivationCache(tmp_path / "cache", 10**9, "float32")
    hp = hp_of(ratio, 3e-3, 0.2, params.model.head_units).model_copy(update={"regime": regime, "train_bn": train_bn})
    other_lr = hp.model_copy(update={"learning_rate": 1e-3})
    pool = ModelPool()

    class Stop(keras.callbacks.Callback):  # a pruned trial: fit ends by an exception after epoch 1
        def on_epoch_end(self, epoch, logs=None):
            raise optuna.TrialPruned()

    first = _trial(tiny_project, params, data, hp, cache, pool)
    with pytest.raises(optuna.TrialPruned):
        _trial(tiny_project, params, data, other_lr, cache, pool, callbacks=[Stop()])
    again = _trial(tiny_project, params, data, other_lr, cache, pool)
    fresh = _trial(tiny_project, params, data, other_lr, cache, None)
    assert not first["reused"] and again["reused"] and not fresh["reused"] and pool.reused == 2
    assert again["model"] is first["model"] and fresh["model"] is not first["model"]
    assert again["mode"] == fresh["mode"] == ("cached" if ratio else "full")
    assert again["history"] == fresh["history"]  # bit for bit: every epoch's loss and accuracy
    for a, b in zip(again["model"].get_weights(), fresh["model"].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert again["history"] != first["history"]  # the learning rate was the trial's own


def test_the_pool_keeps_few_models_and_no_streamed_data(tiny_project, tmp_path):
    params = params_for(tiny_project, tmp_path)
    cache = ActivationCache(tmp_path / "cache", 10**9, "float32")
    pool = ModelPool(models=1)
    memory = load_trial_data(tiny_project / "data/subset", None, 16)
    a, b = (hp_of(r, 1e-3, 0.1, params.model.head_units) for r in (0.5, 1.0))
    _trial(tiny_project, params, memory, a, cache, pool, epochs=1)
    _trial(tiny_project, params, memory, b, cache, pool, epochs=1)  # evicts a's model
    assert pool.take(a) is None and pool.take(b) is not None
    stream = load_trial_data(tiny_project / "data/subset", None, 16, mode="stream")
    streamed = ModelPool()
    out = _trial(tiny_project, params, stream, hp_of(0.0, 1e-3, 0.1, 16), None, streamed, epochs=1)
    assert out["mode"] == "full" and streamed.take(hp_of(0.0, 1e-3, 0.1, 16)) is None  # disk-backed: not kept


def test_a_study_gives_the_same_trials_with_and_without_reuse(tiny_project, tmp_path):
    """The worker's pool on (repeated points reuse their model) or off: every trial's epochs are the same."""
    import mlflow

    from tlpipe.tuning.study import create_study, freeze_points, inside_points

    params = params_for(tiny_project, tmp_path, **{"tune.pruner": "none", "tune.epochs": 2})
    inside = inside_points(params.tune, freeze_points(load(tiny_project, params)))
    points = [
        {"regime": "transfer", "freeze_ratio": round(inside[0], 4), "train_bn": False, "learning_rate": 1e-3},
        {"regime": "scratch", "learning_rate": 3e-3},
        {"regime": "transfer", "freeze_ratio": round(inside[0], 4), "train_bn": False, "learning_rate": 3e-3},
        {"regime": "scratch", "learning_rate": 1e-3},
    ]
    mlflow.set_tracking_uri(params.tracking.default_uri)
    mlflow.set_experiment(params.tracking.experiment)
    epochs = {}
    for name, keep in (("reused", 4), ("fresh", 0)):
        study = create_study(params.tune, f"reuse-{name}", params.seed)
        for point in points:
            study.enqueue_trial(point)
        cfg = params.tune.model_copy(update={"n_trials": len(points)})
        worker = worker_for(tiny_project, params, tmp_path / f"cache-{name}", cfg, epochs=2)
        worker.pool = ModelPool(models=keep)
        with mlflow.start_run():
            worker.work(study)
        trials = study.get_trials()
        assert [t.state.name for t in trials] == ["COMPLETE"] * len(points)
        epochs[name] = [t.intermediate_values for t in trials]
        assert [t.user_attrs["reused_model"] for t in trials] == [False, False, keep > 0, keep > 0]
    assert epochs["reused"] == epochs["fresh"]


def test_a_pruned_trial_records_whether_it_reused_a_model(tiny_project, tmp_path):
    """reused_model is set on pruned trials too (the pool hands the model out before fit, where pruning raises)."""
    import mlflow

    from tlpipe.tuning.study import freeze_points, inside_points

    params = params_for(tiny_project, tmp_path, **{"tune.epochs": 2})
    inside = inside_points(params.tune, freeze_points(load(tiny_project, params)))
    # any positive val_loss is over the threshold: both trials are pruned after their first epoch
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    for lr in (1e-3, 3e-3):
        study.enqueue_trial({"regime": "transfer", "freeze_ratio": round(inside[0], 4), "train_bn": False,
                             "learning_rate": lr})  # fmt: skip
    cfg = params.tune.model_copy(update={"n_trials": 2})
    worker = worker_for(tiny_project, params, tmp_path / "cache", cfg, epochs=2)
    mlflow.set_tracking_uri(params.tracking.default_uri)
    mlflow.set_experiment(params.tracking.experiment)
    with mlflow.start_run():
        worker.work(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert [t.user_attrs["reused_model"] for t in trials] == [False, True]
    assert [t.user_attrs["epochs_run"] for t in trials] == [1, 1]
