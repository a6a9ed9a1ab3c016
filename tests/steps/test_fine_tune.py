import json

import keras
import pytest

from components.fine_tune import fine_tune, hyperparams
from tlpipe.config import load_params
from tlpipe.contracts import HEAD_FILE, MODEL_FILE, BestParams, HyperParams, ScratchBaseline
from tlpipe.errors import DataError
from tlpipe.models.backbones import backbone_identity, load_backbone, preprocess_mode
from tlpipe.models.fitting import Training


def from_params(params) -> HyperParams:
    """fine_tune's own hyperparameters (what it trains with when tuning is off)."""
    return hyperparams(
        BestParams(source="params", stopped_by="disabled"),
        params.fine_tune,
        params.model.dropout,
        params.model.head_units,
    )


def run(project, params, hp, workdir, callbacks=(), baseline=None, head=True, regimes=("transfer", "scratch")):
    """fine_tune's core wired as its main() wires it, on the tiny project's folders."""
    spec, model = str(project / "models/backbone"), params.model
    spec_run = Training.from_params(
        params,
        params.fine_tune,
        hp=hp,
        preprocess=preprocess_mode(spec),
        load=lambda: load_backbone(spec, model.weights, model.image_size),
        head_path=project / "models/head" / HEAD_FILE if head else None,
        callbacks=callbacks,
    )
    return fine_tune(
        spec_run,
        identity=backbone_identity(spec, model.weights, model.image_size),
        subset=project / "data/subset",
        workdir=workdir,
        baseline=baseline,
        regimes=regimes,
    )


class Killed(Exception):
    """Stands in for the process dying after an epoch."""


class KillAfter(keras.callbacks.Callback):
    """Dies once `epochs` epochs are finished (and checkpointed), as the next one starts."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epochs:
            raise Killed()


class Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_rerun_after_kill_resumes_from_last_checkpoint(tiny_project, tmp_path):
    params = load_params(tiny_project / "params.yaml", {"fine_tune.epochs": 4, "fine_tune.patience": 10})
    hp = from_params(params)
    with pytest.raises(Killed):
        run(tiny_project, params, hp, tmp_path / "work", callbacks=[KillAfter(2)])
    seen = Seen()
    model, info = run(tiny_project, params, hp, tmp_path / "work", callbacks=[seen])
    assert info["resumed"] is True
    assert seen.epochs == [2, 3]  # continued at epoch 3 of 4, not from the start
    assert len(info["history"]["loss"]) == 4  # each epoch recorded once across both runs
    # a different job (other hyperparameters) does not pick up that checkpoint
    other = hp.model_copy(update={"learning_rate": hp.learning_rate / 2})
    seen_other = Seen()
    run(tiny_project, params, other, tmp_path / "work2", callbacks=[seen_other])
    assert seen_other.epochs[0] == 0


def test_resumed_run_equals_an_uninterrupted_run(tiny_project, tmp_path):
    """tlpipe/models/fitting.py: a killed-and-resumed run trains exactly what an uninterrupted one does (same
    shuffles, augmentation, dropout masks and optimizer state), so resuming does not change the model."""
    params = load_params(tiny_project / "params.yaml", {"fine_tune.epochs": 4, "fine_tune.patience": 10})
    hp = from_params(params)
    assert hp.dropout > 0  # the head's dropout draws random masks every step
    with pytest.raises(Killed):
        run(tiny_project, params, hp, tmp_path / "work", callbacks=[KillAfter(2)])
    _, resumed = run(tiny_project, params, hp, tmp_path / "work")
    _, whole = run(tiny_project, params, hp, tmp_path / "whole")
    assert resumed["resumed"] and not whole["resumed"]
    assert resumed["history"] == whole["history"]


def test_fine_tuned_model_beats_chance_and_loads_safely(tiny_project, tmp_path):
    # 3 epochs (the tiny project's) leave the tiny model between 0.37 and 0.67 depending on the seed; with
    # early stopping fine_tune trains to convergence, so give it room to converge.
    params = load_params(tiny_project / "params.yaml", {"fine_tune.epochs": 8, "fine_tune.patience": 4})
    model, info = run(tiny_project, params, from_params(params), tmp_path / "work")
    assert max(info["history"]["val_accuracy"]) > 0.6  # 3 classes: chance is 0.33
    assert info["freeze"]["frozen"] < info["freeze"]["total"]
    model.save(tmp_path / "m.keras")
    keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)


def test_best_params_file_overrides_params(tiny_project, tmp_path):
    params = load_params(tiny_project / "params.yaml")
    tuned = HyperParams(freeze_ratio=0.25, learning_rate=0.005, dropout=params.model.dropout, head_units=32)
    BestParams(source="study", params=tuned, study_name="s", metric="val_accuracy", value=0.9, trial=3).write(
        tmp_path / "tune"
    )
    hp = hyperparams(
        BestParams.read(tmp_path / "tune"), params.fine_tune, params.model.dropout, params.model.head_units
    )
    assert (hp.freeze_ratio, hp.learning_rate, hp.head_units, hp.dropout) == (0.25, 0.005, 32, params.model.dropout)
    # tuning off: fine_tune trains with its own params
    off = from_params(params)
    assert (off.freeze_ratio, off.learning_rate, off.head_units, off.dropout) == (
        params.fine_tune.freeze_ratio,
        params.fine_tune.learning_rate,
        params.model.head_units,
        params.model.dropout,
    )
    # a best-params file without every hyperparameter is refused in one line naming the file (the partial
    # file whose missing keys fell back to params is gone: tune always writes all four)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / BestParams.FILE).write_text(
        json.dumps({"source": "study", "params": {"freeze_ratio": 0.25, "learning_rate": 0.005, "head_units": 32}})
    )
    with pytest.raises(DataError, match=r"best_params.json: params.dropout: Field required; rerun tune"):
        BestParams.read(tmp_path / "partial")


def test_deterministic_runs_repeat_exactly(tiny_project, tmp_path):
    """`deterministic: true`: same params + same data give the same history and the same weights."""
    import numpy as np

    params = load_params(tiny_project / "params.yaml", {"fine_tune.epochs": 2, "deterministic": True})
    hp = from_params(params)
    runs = [run(tiny_project, params, hp, tmp_path / f"work{i}") for i in range(2)]
    (first, info1), (second, info2) = runs
    assert info1["history"] == info2["history"]
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fine_tuning_that_hurts_hands_on_the_frozen_features_candidate(tiny_project, tmp_path):
    """A learning rate that wrecks the backbone: the frozen backbone + train_head's head wins on validation."""
    params = load_params(
        tiny_project / "params.yaml", {"fine_tune.epochs": 2, "fine_tune.patience": 2, "fine_tune.monitor": "val_loss"}
    )
    wrecked = from_params(params).model_copy(update={"learning_rate": 5.0, "freeze_ratio": 0.0})
    model, info = run(tiny_project, params, wrecked, tmp_path / "work")
    scores = info["candidates"]
    assert scores["frozen_features"]["val_loss"] < scores["fine_tune"]["val_loss"]
    assert info["selected"] == "frozen_features" and info["hp"].freeze_ratio == 1.0, scores
    assert info["freeze"]["frozen"] == info["freeze"]["total"]
    assert model.get_layer("backbone").trainable_weights == []

    _, scratch_only = run(tiny_project, params, wrecked, tmp_path / "work", regimes=("scratch",))
    assert "frozen_features" not in scratch_only["candidates"]  # tune.regimes: [scratch] hands on no transfer model
    assert scratch_only["selected"] == "fine_tune"


def test_a_scratch_baseline_better_on_validation_is_the_model_handed_on(tiny_project, tmp_path):
    """train_scratch's model is a candidate: when it beats the fine-tuned model on validation it is handed on,
    with its own hyperparameters; a baseline of other classes is no candidate; a tie hands on the baseline."""
    from tlpipe.models.training import save_model

    params = load_params(
        tiny_project / "params.yaml", {"fine_tune.epochs": 4, "fine_tune.patience": 4, "fine_tune.monitor": "val_loss"}
    )
    good, trained = run(tiny_project, params, from_params(params), tmp_path / "good", head=False)
    baseline = tmp_path / "scratch"
    baseline.mkdir()
    save_model(good, baseline / MODEL_FILE)
    scratch_hp = from_params(params).model_copy(update={"regime": "scratch", "freeze_ratio": 0.0, "train_bn": True})
    ScratchBaseline(hyperparameters=scratch_hp, classes=trained["classes"], best_epoch=2).write(baseline)

    wrecked = from_params(params).model_copy(update={"learning_rate": 5.0, "freeze_ratio": 0.0})
    model, info = run(tiny_project, params, wrecked, tmp_path / "work", baseline=baseline, head=False)
    scores = info["candidates"]
    assert set(scores) == {"fine_tune", "scratch_baseline"}
    assert scores["scratch_baseline"]["val_loss"] < scores["fine_tune"]["val_loss"]
    assert info["selected"] == "scratch_baseline" and info["hp"] == scratch_hp, scores
    assert info["freeze"]["frozen"] == 0 and info["freeze"]["effective_ratio"] == 0.0
    assert [w.tolist() for w in model.get_weights()] == [w.tolist() for w in good.get_weights()]

    ScratchBaseline(hyperparameters=scratch_hp, classes=["x", "y", "z"], best_epoch=2).write(baseline)
    _, other = run(tiny_project, params, wrecked, tmp_path / "work", baseline=baseline, head=False)
    assert other["selected"] == "fine_tune" and "scratch_baseline" not in other["candidates"]

    ScratchBaseline(hyperparameters=scratch_hp, classes=trained["classes"], best_epoch=2).write(baseline)
    _, tie = run(tiny_project, params, from_params(params), tmp_path / "good", baseline=baseline, head=False)
    assert tie["candidates"]["fine_tune"] == tie["candidates"]["scratch_baseline"]
    assert tie["selected"] == "scratch_baseline" and tie["hp"] == scratch_hp  # a tie goes to the baseline


def test_the_candidate_handed_on_is_the_one_evaluate_ranks_first():
    """Validation accuracy first, then loss: evaluate's ranking, not `fine_tune.monitor`.

    The case that made it matter: frozen features + head had the higher validation accuracy but the higher loss,
    so ranking on val_loss handed on the scratch model while evaluate called frozen features the best baseline.
    """
    from components.fine_tune import best_candidate
    from tlpipe.reports.selection import FINAL, rank

    scores = {
        "fine_tune": {"val_accuracy": 0.94, "val_loss": 0.20},
        "frozen_features": {"val_accuracy": 0.98, "val_loss": 0.25},
        "scratch_baseline": {"val_accuracy": 0.96, "val_loss": 0.12},
    }
    assert best_candidate(scores) == "frozen_features"
    as_evaluate = {
        FINAL if n == "fine_tune" else n: {"accuracy": s["val_accuracy"], "loss": s["val_loss"]}
        for n, s in scores.items()
    }
    assert rank(as_evaluate)[0] == "frozen_features"
    scores["scratch_baseline"]["val_accuracy"] = 0.98  # same accuracy: the lower loss wins
    assert best_candidate(scores) == "scratch_baseline"


def test_the_trained_model_must_beat_the_baselines_on_validation_accuracy():
    """An accuracy tie goes to a baseline whatever the losses: the trained model's loss is what the study minimised.

    The case: the seen grid at 5 images a class, seed 46 (148/150 each; loss 0.10 fine-tuned, 0.53 frozen).
    """
    from components.fine_tune import best_candidate

    seed46 = {
        "fine_tune": {"val_accuracy": 148 / 150, "val_loss": 0.104},
        "frozen_features": {"val_accuracy": 148 / 150, "val_loss": 0.533},
        "scratch_baseline": {"val_accuracy": 131 / 150, "val_loss": 0.348},
    }
    assert best_candidate(seed46) == "frozen_features"
    seed46["scratch_baseline"]["val_accuracy"] = 148 / 150  # two baselines tied: the lower loss between them
    assert best_candidate(seed46) == "scratch_baseline"
    seed46["fine_tune"]["val_accuracy"] = 149 / 150  # one image more on validation: the trained model
    assert best_candidate(seed46) == "fine_tune"
    assert best_candidate({"fine_tune": {"val_accuracy": 0.9, "val_loss": 0.3}}) == "fine_tune"  # alone
