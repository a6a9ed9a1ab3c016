"""Each training core takes one frozen, keyword-only parameter object built once from the step's params."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from components.fine_tune import fine_tune, hyperparams
from tlpipe.config import load_params
from tlpipe.contracts import BestParams
from tlpipe.models.fitting import Training, train
from tlpipe.tuning.context import StudyContext
from tlpipe.tuning.worker import Worker, WorkerSetup

PARAMS = load_params("params.yaml", {"seed": 7, "model.image_size": 40, "deterministic": False})


def _positional(func) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(func).parameters.values() if p.kind in kinds and p.name != "self"]


def test_the_cores_take_a_parameter_object_not_a_dozen_positionals():
    assert _positional(train) == ["run", "data", "job"]
    assert _positional(fine_tune) == ["run"]  # identity, subset and workdir by keyword
    assert _positional(Worker.__init__) == ["setup"]
    assert inspect.signature(train).parameters["run"].annotation in (Training, "Training")


def test_training_is_built_once_from_the_params_frozen_and_keyword_only():
    hp = hyperparams(BestParams(source="params"), PARAMS.fine_tune, 0.2, 16)
    run = Training.from_params(
        PARAMS, PARAMS.fine_tune, hp=hp, load=lambda: None, preprocess="unit", head_path=Path("h.keras"), callbacks=[1]
    )
    assert (run.seed, run.size, run.deterministic, run.augment, run.cfg, run.callbacks) == (
        7,
        40,
        False,
        PARAMS.augment,
        PARAMS.fine_tune,
        (1,),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Training(PARAMS.fine_tune, PARAMS.augment, hp, 7, True, 40, lambda: None, "unit")  # type: ignore[misc]


def test_the_worker_setup_is_keyword_only_and_frozen():
    fields = {f.name for f in dataclasses.fields(WorkerSetup)}
    assert {
        "cfg",
        "recipe",
        "defaults",
        "subset",
        "head",
        "augmented",
        "cache_dir",
        "load_backbone",
        "identity",
        "worker",
        "regimes",
    } == fields
    with pytest.raises(TypeError):
        WorkerSetup(PARAMS.tune)  # type: ignore[misc]


def _context(tmp_path, params, worker_index: int) -> StudyContext:
    """A study context over empty input folders (an empty manifest), an application backbone without weights."""
    for name in ("subset", "augmented", "head"):
        (tmp_path / name).mkdir()
    (tmp_path / "subset" / "manifest.csv").write_text("path,class,split,sha256\n")
    return StudyContext(
        params,
        subset=tmp_path / "subset",
        augmented=tmp_path / "augmented",
        head=tmp_path / "head",
        backbone="mobilenet_v2",
        cache_dir=tmp_path / "cache",
        worker_index=worker_index,
    )


def test_the_study_context_builds_the_worker_setup_from_the_params(tmp_path):
    ctx = _context(tmp_path, PARAMS, worker_index=3)
    setup = ctx.setup
    assert setup.worker == 3 and setup.cfg == PARAMS.tune and setup.recipe.image_size == 40
    assert setup.regimes == ("scratch",)  # an application backbone without weights: nothing to transfer
    assert (setup.defaults.dropout, setup.defaults.head_units) == (PARAMS.model.dropout, PARAMS.model.head_units)
    assert ctx.study_name.startswith(f"{PARAMS.tune.study_name}-")


def test_a_tuning_worker_makes_tf_ops_repeatable_like_every_training_step(tmp_path, monkeypatch):
    """The trials of two runs must match to the last digit: the study ranks them by val_loss."""
    import tlpipe.models.training as training
    import tlpipe.tuning.context as context

    ctx = _context(tmp_path, PARAMS.model_copy(update={"deterministic": True}), worker_index=0)
    calls = []
    monkeypatch.setattr(training, "set_determinism", lambda seed, deterministic: calls.append((seed, deterministic)))
    monkeypatch.setattr(context, "Worker", lambda setup: setup)
    assert ctx.worker() is ctx.setup
    assert calls == [(7, True)]
