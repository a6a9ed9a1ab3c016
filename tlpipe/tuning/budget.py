"""Fair trials for every regime: budgets per regime, honest labels, warm starts, and the sweep's price.

A network trained from scratch starts slowly: after three epochs its validation loss is far behind a
pretrained backbone's, although given twenty it may end ahead. A study whose trials all get the transfer
regime's short cap and patience, and whose pruner compares every trial after one epoch, therefore picks
transfer whatever the data says. Here the scratch regime gets its own cap and patience (by default
fine_tune's own budget) and the pruner cannot stop a scratch trial before that patience has run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from optuna_integration import KerasPruningCallback

from tlpipe.sections import TuneConfig
from tlpipe.tuning.trial import Recipe


def regime_recipe(recipe: Recipe, cfg: TuneConfig, regime: str) -> Recipe:
    """The study's recipe with the regime's own epoch cap and patience (scratch: tune.scratch_*)."""
    if regime != "scratch":
        return recipe
    return dataclasses.replace(
        recipe, epochs=cfg.scratch_epochs or recipe.epochs, patience=cfg.scratch_patience or recipe.patience
    )


def max_epochs(cfg: TuneConfig) -> int:
    """The longest a trial of any searched regime can run (the pruner's max resource)."""
    scratch = cfg.scratch_epochs if "scratch" in cfg.regimes and cfg.scratch_epochs else 0
    return max(cfg.epochs, scratch)


class RegimePruning(KerasPruningCallback):
    """Optuna's Keras pruning callback that reports every epoch but prunes only after `warmup` epochs.

    Subclassed rather than replaced so pruning stays Optuna's: reporting, `should_prune` and TrialPruned.
    """

    def __init__(self, trial, monitor: str, warmup: int = 0):
        super().__init__(trial, monitor)
        self.warmup = warmup

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Report the epoch's metric; let the pruner decide only after the warm-up."""
        if epoch + 1 > self.warmup:
            super().on_epoch_end(epoch, logs)
        elif (value := (logs or {}).get(self._monitor)) is not None:
            self._trial.report(float(value), step=epoch)


def pruning_warmup(cfg: TuneConfig, regime: str) -> int:
    """Epochs a trial of `regime` runs before the pruner may stop it."""
    return (cfg.scratch_patience or cfg.patience) if regime == "scratch" else 0


def frozen_weight_counts(backbone) -> list[int]:
    """Weights (scalars) frozen when boundary k freezes layers 0..k: a cumulative count per layer index."""
    out, total = [], 0
    for layer in backbone.layers:
        total += sum(int(np.prod(w.shape)) for w in layer.weights)
        out.append(total)
    return out


def label(regime: str, frozen_weights: int, total_weights: int) -> str:
    """What a trial really is: from scratch, full fine-tuning (no weight frozen), frozen features, or transfer."""
    if regime == "scratch":
        return "from scratch"
    if frozen_weights == 0:
        return "full fine-tuning"  # e.g. only the weightless rescaling layer is 'frozen'
    if frozen_weights >= total_weights:
        return "frozen features"
    return f"transfer ({100 * frozen_weights / total_weights:.0f}% of weights frozen)"


def sweep_estimate(study, trainings: int) -> dict:
    """Seconds the sweep will take (its trainings x the mean complete trial) and what the study took."""
    spans = {t.state.name: [] for t in study.get_trials(deepcopy=False)}
    for trial in study.get_trials(deepcopy=False):
        if trial.datetime_start and trial.datetime_complete:
            spans[trial.state.name].append((trial.datetime_complete - trial.datetime_start).total_seconds())
    complete = spans.get("COMPLETE") or [0.0]
    study_seconds = sum(sum(v) for v in spans.values())
    return {
        "trainings": trainings,
        "seconds": round(trainings * sum(complete) / len(complete), 1),
        "study_seconds": round(study_seconds, 1),
    }


def sweep_runs(setting: bool | str, estimate: dict) -> bool:
    """tune.sweep: true/false, or auto (run only when it costs no more than the study did)."""
    if setting == "auto":
        return estimate["seconds"] <= estimate["study_seconds"]
    return bool(setting)
