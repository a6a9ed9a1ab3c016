"""Fair trials: the scratch regime's own budget, pruning after its warm-up, honest labels, warm starts, sweep cost."""

from datetime import datetime, timedelta

import keras
import optuna
import pytest

from tlpipe.sections import TuneConfig
from tlpipe.tuning.budget import (
    RegimePruning,
    frozen_weight_counts,
    label,
    max_epochs,
    pruning_warmup,
    regime_recipe,
    sweep_estimate,
    sweep_runs,
)
from tlpipe.tuning.study import pruner, warm_start
from tlpipe.tuning.trial import Recipe

RECIPE = Recipe(seed=1, image_size=16, preprocess="none", batch_size=8, epochs=10, patience=3, monitor="val_loss")
DIST = {
    "regime": optuna.distributions.CategoricalDistribution(["transfer", "scratch"]),
    "freeze_ratio": optuna.distributions.CategoricalDistribution([0.0, 0.5, 1.0]),
    "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
}


def test_scratch_gets_its_own_cap_and_patience():
    cfg = TuneConfig(epochs=10, patience=3, scratch_epochs=30, scratch_patience=5)
    assert regime_recipe(RECIPE, cfg, "transfer") == RECIPE
    scratch = regime_recipe(RECIPE, cfg, "scratch")
    assert (scratch.epochs, scratch.patience, scratch.seed) == (30, 5, 1)
    assert pruning_warmup(cfg, "scratch") == 5 and pruning_warmup(cfg, "transfer") == 0
    assert max_epochs(cfg) == 30 and max_epochs(cfg.model_copy(update={"regimes": ["transfer"]})) == 10
    same = TuneConfig(scratch_epochs=None, scratch_patience=None)
    assert regime_recipe(RECIPE, same, "scratch") == RECIPE


def test_hyperband_lowest_rung_is_a_patience_window():
    found = pruner(TuneConfig(pruner="hyperband", epochs=10, patience=3, scratch_epochs=30))
    assert isinstance(found, optuna.pruners.HyperbandPruner)
    assert found._min_resource == 3 and found._max_resource == 30


def test_pruner_cannot_stop_a_slow_starter_before_its_warmup():
    study = optuna.create_study(
        direction="minimize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    for _ in range(2):  # two fast starters set the median low at every epoch
        trial = study.ask()
        for epoch in range(8):
            trial.report(0.1, epoch)
        study.tell(trial, 0.1)
    slow = study.ask()
    callback = RegimePruning(slow, "val_loss", warmup=5)
    for epoch in range(5):
        callback.on_epoch_end(epoch, {"val_loss": 2.0})  # far worse than the median, but inside the warm-up
    assert slow.storage.get_trial(slow._trial_id).intermediate_values == {e: 2.0 for e in range(5)}
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(5, {"val_loss": 2.0})
    plain = RegimePruning(study.ask(), "val_loss", warmup=0)
    with pytest.raises(optuna.TrialPruned):
        plain.on_epoch_end(0, {"val_loss": 2.0})


def test_a_freeze_point_that_freezes_no_weights_is_full_fine_tuning():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    counts = frozen_weight_counts(keras.Model(inputs, x))
    assert counts == [0, 0, 3 * 3 * 3 * 4 + 4, 3 * 3 * 3 * 4 + 4]
    total = counts[-1]
    assert label("transfer", counts[1], total) == "full fine-tuning"  # only the rescaling layer frozen
    assert label("transfer", counts[2], total) == "frozen features"
    assert label("transfer", total // 2, total) == "transfer (50% of weights frozen)"
    assert label("scratch", 0, total) == "from scratch"


def add(study, params: dict, value: float, seconds: float = 1.0) -> None:
    """A finished trial with the given params, value and duration."""
    start = datetime(2026, 1, 1)
    study.add_trial(
        optuna.trial.FrozenTrial(
            number=0,
            state=optuna.trial.TrialState.COMPLETE,
            value=value,
            datetime_start=start,
            datetime_complete=start + timedelta(seconds=seconds),
            params=params,
            distributions={k: DIST[k] for k in params},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=0,
        )
    )


def test_a_new_study_starts_from_the_previous_studys_best_points(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = TuneConfig(study_name="tlpipe", storage=url, warm_start=2, metric="val_loss")
    old = optuna.create_study(study_name="tlpipe-aaaa", storage=url, direction="minimize")
    add(old, {"regime": "transfer", "freeze_ratio": 0.5, "learning_rate": 1e-3}, 0.5)
    add(old, {"regime": "scratch", "learning_rate": 3e-3}, 0.2)
    add(old, {"regime": "transfer", "freeze_ratio": 1.0, "learning_rate": 1e-4}, 0.3)
    add(old, {"regime": "transfer", "freeze_ratio": 0.0, "learning_rate": 1e-2}, 0.9)
    new = optuna.create_study(study_name="tlpipe-bbbb", storage=url, direction="minimize")
    points = [0.0, 0.5, 1.0]
    queued = warm_start(new, cfg, points, ["transfer", "scratch"], url)
    assert queued == [
        {"regime": "scratch", "learning_rate": 3e-3},
        {"regime": "transfer", "freeze_ratio": 1.0, "learning_rate": 1e-4},
    ]
    first = new.ask({k: DIST[k] for k in ("regime", "learning_rate")})
    assert first.params == {"regime": "scratch", "learning_rate": 3e-3}
    assert warm_start(new, cfg, points, ["transfer", "scratch"], url) == []  # not empty any more: no second queue
    narrow = optuna.create_study(study_name="tlpipe-cccc", storage=url, direction="minimize")
    # transfer only, two freeze points: the scratch point and freeze ratio 1.0 do not fit this study
    assert warm_start(narrow, cfg, [0.0, 0.5], ["transfer"], url) == []
    other = optuna.create_study(study_name="other-dddd", storage=url, direction="minimize")
    assert warm_start(other, cfg.model_copy(update={"study_name": "other"}), points, ["transfer"], url) == []


def test_the_sweep_costs_are_known_before_it_runs(tmp_path):
    study = optuna.create_study(direction="minimize")
    for value, seconds in ((0.5, 10.0), (0.3, 30.0)):
        add(study, {"learning_rate": 1e-3}, value, seconds)
    estimate = sweep_estimate(study, trainings=21)
    assert estimate == {"trainings": 21, "seconds": 420.0, "study_seconds": 40.0}
    assert not sweep_runs("auto", estimate) and sweep_runs(True, estimate) and not sweep_runs(False, estimate)
    assert sweep_runs("auto", sweep_estimate(study, trainings=2))
    assert TuneConfig.model_validate({"sweep": "auto"}).sweep == "auto" and TuneConfig().sweep == "auto"
    assert TuneConfig.model_validate({"sweep": False}).sweep is False
