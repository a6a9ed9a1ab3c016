"""The tuning plots: optimization history, parameter importances, and the transferability curve.

The transferability curve is validation accuracy against the share of the backbone kept frozen: the
Yosinski et al. (2014) "how transferable are features" picture for this backbone and data.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tlpipe.contracts import (
    HISTORY_PNG,
    IMPORTANCES_PNG,
    TRANSFERABILITY_CSV,
    TRANSFERABILITY_PNG,
    TRIALS_CSV,
    TRIALS_PNG,
)
from tlpipe.reports.plots import pyplot

# transferability.csv (tlpipe/tuning/sweep.py): one row per (regime, freeze point) of the controlled sweep.
SWEEP_COLUMNS = ("regime", "freeze_ratio", "boundary", "mean", "std", "n", "learning_rate", "train_bn")
TRIAL_COLUMNS = (
    "number",
    "state",
    "value",
    "regime",
    "freeze_ratio",
    "learning_rate",
    "train_bn",
    "epochs_run",
    "mode",
)


def write_trials_csv(study, trials, path: Path) -> None:
    """One row per finished trial (the data behind `dvc plots`), from Optuna's `study.trials_dataframe()`.

    A pruned trial has no value: its last reported one stands in, so the scatter shows where it was cut. The value
    comes from the trials themselves: with metric names set, the frame's column is `value_<metric>`, not `value`.
    """
    import pandas as pd

    numbers = sorted(t.number for t in trials)
    frame = study.trials_dataframe(attrs=("number", "state", "params", "user_attrs")) if numbers else None
    if frame is None or frame.empty:
        pd.DataFrame(columns=list(TRIAL_COLUMNS)).to_csv(path, index=False, lineterminator="\n")
        return
    frame = frame[frame["number"].isin(numbers)].sort_values("number")
    values = {
        t.number: t.value if t.value is not None else t.intermediate_values[max(t.intermediate_values)]
        for t in trials
        if t.value is not None or t.intermediate_values
    }
    out = pd.DataFrame(
        {
            "number": frame["number"],
            "state": frame["state"].str.lower(),
            "value": frame["number"].map(values),
            **{
                name: frame.get(column, pd.Series(default, index=frame.index)).fillna(default)
                for name, column, default in (
                    ("regime", "user_attrs_regime", "transfer"),
                    ("freeze_ratio", "user_attrs_freeze_ratio", ""),
                    ("learning_rate", "params_learning_rate", ""),
                    ("train_bn", "user_attrs_train_bn", ""),
                    ("epochs_run", "user_attrs_epochs_run", 0),
                    ("mode", "user_attrs_mode", ""),
                )
            },
        },
        columns=list(TRIAL_COLUMNS),
    )
    out.to_csv(path, index=False, lineterminator="\n")


def _save_optuna_plot(draw, study, path: Path, title: str) -> None:
    """Save one of optuna.visualization.matplotlib's plots; a study too small for it gets a note instead."""
    import warnings

    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        try:
            ax = draw(study)
            fig = ax.figure
            if "history" in title:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers are integers
        except (RuntimeError, ValueError) as exc:  # too few complete trials, or a constant parameter
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{title} unavailable: {exc}", ha="center", va="center", wrap=True, fontsize=8)
    fig.set_size_inches(6.4, 3.8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _transferability(trials, path: Path, metric: str, maximize: bool) -> None:
    plt = pyplot()
    done = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("regime", "transfer") == "transfer"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ratios = np.array([t.user_attrs["freeze_ratio"] for t in done])
    values = np.array([t.value for t in done])
    lrs = np.array([t.params["learning_rate"] for t in done])
    points = ax.scatter(ratios, values, c=np.log10(lrs), cmap="viridis", label="trial")
    fig.colorbar(points, ax=ax, label="log10 learning rate")
    pick = max if maximize else min
    best = {r: pick(values[ratios == r]) for r in sorted(set(ratios))}
    ax.plot(list(best), list(best.values()), "-", color="black", label="best per freeze point")
    ax.set_xlabel("share of backbone layers frozen")
    ax.set_ylabel(metric)
    ax.set_xlim(-0.03, 1.03)
    ax.set_title("this study's transfer trials by freeze ratio")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_all(study, trials, out_dir: Path, metric: str) -> None:
    """history.png, importances.png, transferability.png and trials.csv."""
    maximize = metric.endswith("accuracy")
    write_trials_csv(study, trials, out_dir / TRIALS_CSV)
    from optuna.visualization import matplotlib as optuna_plots

    _save_optuna_plot(optuna_plots.plot_optimization_history, study, out_dir / HISTORY_PNG, "optimization history")
    _save_optuna_plot(
        optuna_plots.plot_param_importances, study, out_dir / IMPORTANCES_PNG, "hyperparameter importances"
    )
    _transferability(trials, out_dir / TRIALS_PNG, metric, maximize)
    # the sweep, when it runs, replaces both; until then they say it is off (dvc plots read both)
    write_sweep_csv([], out_dir / TRANSFERABILITY_CSV)
    _note(out_dir / TRANSFERABILITY_PNG, "transferability sweep: off (tune.sweep: false)")


def write_sweep_csv(rows: list[dict], path: Path) -> None:
    """transferability.csv: the sweep's rows (header only when no sweep ran)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _note(path: Path, text: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_disabled(out_dir: Path) -> None:
    """The files the graph declares for tune (pipelines/graph.py plots), when tuning is off, saying so."""
    write_trials_csv(None, [], out_dir / TRIALS_CSV)
    write_sweep_csv([], out_dir / TRANSFERABILITY_CSV)
    for name in (HISTORY_PNG, IMPORTANCES_PNG, TRANSFERABILITY_PNG):
        _note(out_dir / name, f"{name.removesuffix('.png')}: tuning disabled (tune.enabled: false)")
