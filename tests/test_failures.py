"""Failures end in one line: a failing trial, a full disk, a dead server, an interrupt."""

from __future__ import annotations

import pytest

from tlpipe.config import TuneConfig
from tlpipe.errors import PipelineError
from tlpipe.tuning.worker import Worker, summarize


class FailingTrials(Worker):
    """A worker whose training raises inside the trial (as suggest() did for `tune.regimes: []`)."""

    def __init__(self, cfg: TuneConfig, fail_every: int):
        self.cfg, self.worker, self.ran, self.fail_every = cfg, 0, 0, fail_every

    def _train(self, trial) -> float:
        value = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        if trial.number % self.fail_every == 0:
            [][trial.number]  # noqa: B018 - the IndexError a bad search space raises
        return value


def test_a_failing_trial_fails_alone_and_the_study_goes_on(capsys):
    import optuna

    cfg = TuneConfig(n_trials=4, sampler="random")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    ran, timed_out = FailingTrials(cfg, fail_every=2).work(study)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") >= 3 and not timed_out
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["fail_reason"] == "IndexError: list index out of range" for t in failed)
    out = capsys.readouterr()
    assert "tune: trial 0 fail: IndexError: list index out of range" in out.out
    assert "Traceback" not in out.err + out.out


def test_a_study_where_every_trial_fails_stops_and_is_one_line(tmp_path, capsys):
    import optuna

    cfg = TuneConfig(n_trials=3, sampler="random")
    study = optuna.create_study(study_name="s", direction="maximize")
    FailingTrials(cfg, fail_every=1).work(study)  # returns: it does not try forever
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3
    with pytest.raises(PipelineError) as err:
        summarize(study, cfg, tmp_path, "n_trials")
    assert str(err.value) == ("study s: no trial completed ({'FAIL': 3}); e.g. IndexError: list index out of "
                              "range; see the MLflow runs")
    assert "Traceback" not in "".join(capsys.readouterr())
