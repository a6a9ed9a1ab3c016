"""trials.csv (the data behind `dvc plots` of the study) holds each trial's own value."""

import optuna
import pandas as pd

from tlpipe.tuning.plots import write_trials_csv


def test_trials_csv_holds_each_trials_value_not_its_last_epoch(tmp_path):
    study = optuna.create_study(direction="minimize")
    study.set_metric_names(["val_loss"])  # as tlpipe names its studies: the frame's column is value_val_loss
    for curve in ([0.9, 0.4, 0.6], [1.2, 0.8, 0.7]):
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        study.tell(trial, min(curve))  # the objective returns the best epoch's value
    pruned = study.ask()
    pruned.report(1.5, 0)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    write_trials_csv(study, study.get_trials(), tmp_path / "trials.csv")
    table = pd.read_csv(tmp_path / "trials.csv")
    assert table["value"].tolist() == [0.4, 0.7, 1.5]  # best epoch of each; the pruned one's last report
    assert table["state"].tolist() == ["complete", "complete", "pruned"]
