import json

import keras
import pytest

from components.config import load_params
from components.fine_tune import HyperParams, fine_tune


class Killed(Exception):
    """Stands in for the process dying after an epoch."""


class KillAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise Killed()


class Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_rerun_after_kill_resumes_from_last_checkpoint(tiny_project, tmp_path):
    params = load_params(tiny_project / "params.yaml", {"fine_tune.epochs": 4, "fine_tune.patience": 10})
    hp = HyperParams.from_params(params)
    subset, head = tiny_project / "data/subset", tiny_project / "models/head.keras"
    with pytest.raises(Killed):
        fine_tune(params, hp, subset, head, tmp_path / "work", callbacks=[KillAfter(2)])
    seen = Seen()
    model, info = fine_tune(params, hp, subset, head, tmp_path / "work", callbacks=[seen])
    assert info["resumed"] is True
    assert seen.epochs == [2, 3]  # continued at epoch 3 of 4, not from the start
    assert len(info["history"]["loss"]) == 4  # each epoch recorded once across both runs
    # a different job (other hyperparameters) does not pick up that checkpoint
    other = HyperParams(hp.freeze_ratio, hp.learning_rate / 2, hp.dropout, hp.head_units)
    seen_other = Seen()
    fine_tune(params, other, subset, head, tmp_path / "work2", callbacks=[seen_other])
    assert seen_other.epochs[0] == 0


def test_fine_tuned_model_beats_chance_and_loads_safely(tiny_project, tmp_path):
    params = load_params(tiny_project / "params.yaml")
    model, info = fine_tune(params, HyperParams.from_params(params), tiny_project / "data/subset",
                            tiny_project / "models/head.keras", tmp_path / "work")
    assert max(info["history"]["val_accuracy"]) > 0.6  # 3 classes: chance is 0.33
    assert info["freeze"]["frozen"] < info["freeze"]["total"]
    model.save(tmp_path / "m.keras")
    keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)


def test_best_params_file_overrides_params(tiny_project, tmp_path):
    params = load_params(tiny_project / "params.yaml")
    best = tmp_path / "best_params.json"
    best.write_text(json.dumps({"params": {"freeze_ratio": 0.25, "learning_rate": 0.005, "head_units": 32}}))
    hp = HyperParams.from_file(best, params)
    assert (hp.freeze_ratio, hp.learning_rate, hp.head_units, hp.dropout) == (0.25, 0.005, 32, params.model.dropout)


def test_deterministic_runs_repeat_exactly(tiny_project, tmp_path):
    """`deterministic: true`: same params + same data give the same history and the same weights."""
    import numpy as np

    params = load_params(tiny_project / "params.yaml", {"fine_tune.epochs": 2, "deterministic": True})
    hp = HyperParams.from_params(params)
    runs = [fine_tune(params, hp, tiny_project / "data/subset", tiny_project / "models/head.keras",
                      tmp_path / f"work{i}") for i in range(2)]
    (first, info1), (second, info2) = runs
    assert info1["history"] == info2["history"]
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
