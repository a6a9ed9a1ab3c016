"""A controlled transferability sweep: validation accuracy against the share of the backbone kept frozen.

The study's trials land wherever the sampler sent them, with whatever learning rate; a curve drawn from them
dips where one trial's learning rate was too high. The sweep trains every chosen freeze point to convergence
with a fixed recipe (the study's best learning rate at that point, else its overall best) and several seeds,
on the cached activations, next to the from-scratch reference: Yosinski et al. (2014)'s picture for this
backbone and data. Written as transferability.csv (freeze_ratio, boundary, mean, std, n) and a PNG.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from tlpipe.contracts import TRANSFERABILITY_CSV, TRANSFERABILITY_PNG, HyperParams
from tlpipe.reports.plots import pyplot
from tlpipe.sections import TuneConfig
from tlpipe.tuning.plots import write_sweep_csv


def chosen_points(points: list[float], count: int) -> list[float]:
    """`count` freeze points spread evenly over the valid ones (always the first and the last)."""
    if len(points) <= count:
        return list(points)
    picks = np.linspace(0, len(points) - 1, count).round().astype(int)
    return [points[i] for i in sorted(set(picks))]


def _recipe_for(study, regime: str, ratio: float | None) -> dict | None:
    """Learning rate and BatchNormalization choice of the best complete trial of a regime (at a ratio)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
        and t.user_attrs.get("regime", "transfer") == regime
        and (ratio is None or abs(t.user_attrs.get("freeze_ratio", -1) - ratio) < 1e-9)
    ]
    if not done:
        return None
    best = max(done, key=lambda t: t.value) if study.direction.name == "MAXIMIZE" else min(done, key=lambda t: t.value)
    return {"learning_rate": best.params["learning_rate"], "train_bn": best.user_attrs.get("train_bn", False)}


def jobs_for(worker, cfg: TuneConfig) -> list[tuple[str, float]]:
    """(regime, freeze ratio) of each sweep point: the chosen transfer points, then scratch if searched."""
    jobs = [("transfer", r) for r in chosen_points(worker.points, cfg.sweep_points)]
    if "scratch" in worker.regimes:
        jobs.append(("scratch", 0.0))
    return jobs


def trainings(worker, cfg: TuneConfig) -> int:
    """How many trainings the sweep runs (points x seeds): its cost, known before it starts."""
    return len(jobs_for(worker, cfg)) * cfg.sweep_seeds


def sweep(worker, study, cfg: TuneConfig, out_dir: Path) -> dict:
    """Train each chosen point (and scratch) with `cfg.sweep_seeds` seeds; write CSV + PNG; returns the cost."""
    from tlpipe.tuning.budget import regime_recipe
    from tlpipe.tuning.trial import run_trial

    started = time.monotonic()
    fallback = {"learning_rate": study.best_params["learning_rate"], "train_bn": False}
    jobs = jobs_for(worker, cfg)
    rows = []
    for regime, ratio in jobs:
        recipe = (
            _recipe_for(study, regime, ratio if regime == "transfer" else None)
            or _recipe_for(study, regime, None)
            or fallback
        )
        hp = HyperParams.model_validate(
            {
                "freeze_ratio": ratio,
                "dropout": worker.defaults.dropout,
                "head_units": worker.defaults.head_units,
                "regime": regime,
                **recipe,
            }
        )
        values, boundary = [], ""
        for k in range(cfg.sweep_seeds):
            base = regime_recipe(worker.recipe, cfg, regime)  # scratch keeps its own cap and patience
            seeded = dataclasses.replace(base, seed=base.seed + 1000 * (k + 1))
            result = run_trial(
                seeded, hp, worker.data, worker.load_backbone(), worker.head, worker.cache, worker.identity
            )
            values.append(max(result["history"]["val_accuracy"]))  # the curve is in accuracy, whatever ranks trials
            boundary = result["plan"].boundary
        rows.append(
            {
                "regime": regime,
                "freeze_ratio": ratio,
                "boundary": boundary,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "n": len(values),
                "learning_rate": hp.learning_rate,
                "train_bn": hp.train_bn,
            }
        )
        print(
            f"tune: sweep {regime} {ratio:.2f} ({boundary}): {rows[-1]['mean']:.4f} +- {rows[-1]['std']:.4f}",
            flush=True,
        )
    write_sweep_csv(rows, out_dir / TRANSFERABILITY_CSV)
    plot(rows, out_dir / TRANSFERABILITY_PNG, "val_accuracy")
    cost = {"seconds": round(time.monotonic() - started, 1), "trainings": len(jobs) * cfg.sweep_seeds}
    print(f"tune: transferability sweep cost {cost['seconds']} s for {cost['trainings']} trainings")
    return cost


def plot(rows: list[dict], path: Path, metric: str) -> None:
    """Mean +- std per freeze point, with the frozen-features (all frozen) and from-scratch references."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    transfer = [r for r in rows if r["regime"] == "transfer"]
    ax.errorbar(
        [r["freeze_ratio"] for r in transfer],
        [r["mean"] for r in transfer],
        yerr=[r["std"] for r in transfer],
        fmt="o-",
        capsize=3,
        label="fine-tuned from the pretrained backbone",
    )
    frozen = [r for r in transfer if r["freeze_ratio"] >= 1.0 - 1e-9]
    if frozen:
        ax.axhline(frozen[0]["mean"], color="grey", linestyle=":", label="frozen features (all frozen)")
    scratch = [r for r in rows if r["regime"] == "scratch"]
    if scratch:
        ax.axhline(scratch[0]["mean"], color="tab:red", linestyle="--", label="trained from scratch")
    ax.set_xlabel("share of backbone layers frozen")
    ax.set_ylabel(f"{metric} (mean +- std over seeds)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_title("transferability: a controlled sweep")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
