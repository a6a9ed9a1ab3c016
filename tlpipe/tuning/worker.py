"""A tuning worker: loads data and backbone once, then takes trials of the shared study until its budget.

The budget is a trial count (`tune.n_trials` finished trials over all workers; Optuna's MaxTrialsCallback),
so the result does not depend on machine load; `tune.timeout` is an optional wall-clock cap per worker, and
best_params.json says when it cut the study short. Each trial is a nested MLflow run; pruned trials are
tagged `optuna.state=pruned`.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlpipe.contracts import BestParams, HyperParams
from tlpipe.errors import PipelineError
from tlpipe.sections import TuneConfig
from tlpipe.tuning.budget import RegimePruning, frozen_weight_counts, label, pruning_warmup, regime_recipe
from tlpipe.tuning.cache import cache_plan
from tlpipe.tuning.reuse import ModelPool
from tlpipe.tuning.study import FINISHED, counts, finished, freeze_points, suggest
from tlpipe.tuning.trial import ActivationCache, Recipe, load_trial_data, run_trial


@dataclass(frozen=True)
class Defaults:
    """Hyperparameters a study does not search, taken from params."""

    dropout: float
    head_units: int


@dataclass(frozen=True, kw_only=True)
class WorkerSetup:
    """What a worker is made of (keyword-only): built once per step run, by tlpipe/tuning/context.py."""

    cfg: TuneConfig
    recipe: Recipe
    defaults: Defaults
    subset: Path  # make_subset's folder
    head: Path  # train_head's head.keras
    augmented: Path | None  # augment's folder (pre-augmented training copies), if any
    cache_dir: Path  # the activation cache
    load_backbone: Callable[[], Any]  # returns a fresh backbone (keras.Model)
    identity: str  # tlpipe.models.backbones.backbone_identity: keys the cache and the study
    worker: int = 0  # seeds this worker's sampler
    regimes: tuple[str, ...] | None = None  # None: cfg.regimes


class Worker:
    """One worker process (or pod) of a study."""

    def __init__(self, setup: WorkerSetup):
        cfg = setup.cfg
        self.cfg, self.recipe, self.defaults = cfg, setup.recipe, setup.defaults
        self.head, self.worker = setup.head, setup.worker
        self.regimes = list(setup.regimes or cfg.regimes)
        self.ran = 0  # trials this worker ran (the study also holds other workers' trials)
        self.data = load_trial_data(
            setup.subset, setup.augmented, setup.recipe.image_size, cfg.input, cfg.cache_max_bytes
        )
        self.load_backbone, self.identity = setup.load_backbone, setup.identity
        backbone = setup.load_backbone()
        cache_dir = setup.cache_dir
        self.points = freeze_points(backbone)
        self.frozen_weights = frozen_weight_counts(backbone)  # per boundary: what "transfer" really freezes
        self.cache = (
            ActivationCache(cache_dir, cfg.cache_max_bytes, cfg.cache_dtype, cfg.cache_disk_bytes)
            if cfg.cache
            else None
        )
        self.pool = ModelPool(memory_bytes=cfg.cache_max_bytes)  # a repeated configuration reuses its model
        if self.cache is not None:  # before any trial: what each freeze point costs and where it will live
            print(self.cache.describe(cache_plan(backbone, self.data.images, cfg.cache_dtype)), flush=True)

    def objective(self, trial) -> float:
        """Train one trial; any error fails this trial only, its reason kept as the `fail_reason` attribute."""
        import optuna

        from tlpipe.redact import redact_text

        try:
            return self._train(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # a trial's own failure (OOM, a NaN, a bad point): the study goes on without it
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            trial.set_user_attr("fail_reason", redact_text(f"{type(exc).__name__}: {first}".rstrip(": ")))
            raise

    def _train(self, trial) -> float:
        """Train one trial (pruned on the per-epoch metric), logged as a nested MLflow run."""
        import keras
        import mlflow
        import optuna

        from tlpipe.tracking.runs import epoch_callback

        cfg = self.cfg
        self.ran += 1
        hp = HyperParams(
            **{
                "dropout": self.defaults.dropout,
                "head_units": self.defaults.head_units,
                **suggest(trial, cfg, self.points, self.regimes),
            }
        )
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("dropout", hp.dropout)
        trial.set_user_attr("head_units", hp.head_units)
        trial.set_user_attr("train_bn", hp.train_bn)

        class Epochs(keras.callbacks.Callback):  # counted here, stored once when the trial ends
            run = 0

            def on_epoch_end(self, epoch, logs=None):
                self.run = epoch + 1

        with mlflow.start_run(
            run_name=f"trial {trial.number}",
            nested=True,
            tags={
                "tlpipe.step": "tune",
                "optuna.trial": str(trial.number),
                "optuna.study": trial.study.study_name,
                "tlpipe.worker": str(self.worker),
            },
        ):
            mlflow.log_params(hp.model_dump())
            state, pruned, epochs, reuses = "failed", None, Epochs(), self.pool.reused
            try:
                pruning = RegimePruning(trial, cfg.metric, pruning_warmup(cfg, hp.regime))
                result = run_trial(
                    regime_recipe(self.recipe, cfg, hp.regime),
                    hp,
                    self.data,
                    self.load_backbone,
                    self.head,
                    self.cache,
                    self.identity,
                    callbacks=[epochs, epoch_callback(), pruning],
                    pool=self.pool,
                )
                values = result["history"][cfg.metric]
                best = max(values) if cfg.metric.endswith("accuracy") else min(values)
                trial.set_user_attr("mode", result["mode"])
                trial.set_user_attr("frozen_layers", result["plan"].frozen)
                trial.set_user_attr("boundary", result["plan"].boundary)
                trial.set_user_attr(
                    "label", label(hp.regime, self.frozen_weights[result["plan"].frozen], self.frozen_weights[-1])
                )
                mlflow.log_metric(f"best_{cfg.metric}", best)
                state = "complete"
                return best
            except optuna.TrialPruned as exc:
                # Raised after the run closes: a pruned trial is a FINISHED run tagged optuna.state=pruned,
                # not a FAILED one (Optuna's own state is PRUNED either way).
                state, pruned = "pruned", exc
            finally:
                trial.set_user_attr("epochs_run", epochs.run)
                trial.set_user_attr("reused_model", self.pool.reused > reuses)  # pruned trials too
                mlflow.set_tag("optuna.state", state)
        raise pruned

    def _progress(self, study, trial) -> None:
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:  # no complete trial yet
            best = "-"
        reason = f": {trial.user_attrs['fail_reason']}" if "fail_reason" in trial.user_attrs else ""
        print(
            f"tune: trial {trial.number} {trial.state.name.lower()}{reason} ({finished(study)} of "
            f"{self.cfg.n_trials} finished; best so far {best})",
            flush=True,
        )
        last = [t.state.name for t in study.get_trials(deepcopy=False)][-self.cfg.n_trials :]
        if len(last) == self.cfg.n_trials and set(last) == {"FAIL"}:
            study.stop()  # tune.n_trials failures in a row: more trials would not finish the study

    def work(self, study) -> tuple[int, bool]:
        """Take trials until tune.n_trials are finished in the study; returns (trials run, stopped by timeout)."""
        import optuna
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        if finished(study) >= self.cfg.n_trials:
            return 0, False
        before = self.ran
        started = time.monotonic()
        # Optuna logs a failed trial's traceback at WARNING; `_progress` prints its reason in one line instead.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        # gc_after_trial's full collection walked every object TensorFlow, Keras and MLflow had made (0.5 s a
        # trial in the study_cost profile); frozen, they are skipped and it scans only what trials leave.
        gc.freeze()
        try:
            study.optimize(
                self.objective,
                timeout=self.cfg.timeout,
                catch=(Exception,),
                callbacks=[
                    MaxTrialsCallback(self.cfg.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                    self._progress,
                ],
                gc_after_trial=True,
            )
        finally:
            gc.unfreeze()
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        timed_out = (
            bool(self.cfg.timeout)
            and time.monotonic() - started >= self.cfg.timeout
            and finished(study) < self.cfg.n_trials
        )
        return self.ran - before, timed_out


def summarize(study, cfg: TuneConfig, out_dir: Path, stopped_by: str, regimes: list[str] | None = None) -> BestParams:
    """Write best_params.json, trials.csv and the plots of this study's trials; return the summary.

    `regimes`: the regimes searched (default cfg.regimes), which bound fine_tune's candidates.
    """
    from tlpipe.tuning.plots import plot_all

    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED + ("FAIL",)]
    if not any(t.state.name == "COMPLETE" for t in trials):
        reasons = sorted({t.user_attrs["fail_reason"] for t in trials if "fail_reason" in t.user_attrs})
        why = f"; e.g. {reasons[0]}" if reasons else ""
        raise PipelineError(f"study {study.study_name}: no trial completed ({counts(study)}){why}; see the MLflow runs")
    best = study.best_trial
    hp = {
        "freeze_ratio": best.user_attrs["freeze_ratio"],
        "learning_rate": best.params["learning_rate"],
        "dropout": best.params.get("dropout", best.user_attrs.get("dropout")),
        "head_units": best.params.get("head_units", best.user_attrs.get("head_units")),
        "regime": best.user_attrs.get("regime", "transfer"),
        "train_bn": best.user_attrs.get("train_bn", False),
    }
    summary = BestParams.model_validate(
        dict(
            source="study",
            study_name=study.study_name,
            metric=cfg.metric,
            value=best.value,
            trial=best.number,
            params=hp,
            boundary=best.user_attrs.get("boundary"),
            label=best.user_attrs.get("label", ""),
            states=counts(study),
            stopped_by=stopped_by,
            epochs_run=sum(t.user_attrs.get("epochs_run", 0) for t in trials),
            regimes=list(regimes or cfg.regimes),
        )
    )
    summary.write(out_dir)
    plot_all(study, trials, out_dir, cfg.metric)
    return summary
