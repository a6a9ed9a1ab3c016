"""tune: an Optuna study over the freeze ratio and learning rate (optionally dropout and head width).

The freeze ratio is searched over the backbone's real block boundaries, so nearby ratios that freeze the
same layers are one point. Many workers (processes here, pods on a cluster) share one study in PostgreSQL;
heartbeats turn a killed worker's trial into a failed one that is retried. Trials prune on the per-epoch
validation metric and train on cached activations (components/tune_trial.py). The best trial's params go
to a file `fine_tune` reads.

Subcommands: `create-study` (once, before workers), `worker` (take trials until tune.n_trials in total),
`summarize` (best params + plots), and `run` (all three in one process; the dvc stage).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

from components.cli import atomic_dir, parser, run_main
from components.config import Params, TuneConfig, load_params
from components.errors import PipelineError

FINISHED = ("COMPLETE", "PRUNED")


def study_fingerprint(params: Params) -> str:
    """What makes two studies comparable: search space, model, data selection and augmentation."""
    keys = params.model_dump(include={"tune", "model", "augment", "make_subset", "data", "fine_tune", "seed"})
    for volatile in ("n_trials", "timeout", "storage", "enabled", "study_name"):
        keys["tune"].pop(volatile, None)
    for volatile in ("freeze_ratio", "learning_rate"):
        keys["fine_tune"].pop(volatile, None)
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:8]


def study_name(params: Params) -> str:
    """tune.study_name plus a fingerprint, so a changed search never mixes with old trials."""
    return f"{params.tune.study_name}-{study_fingerprint(params)}"


def make_storage(cfg: TuneConfig, url: str | None = None):
    """RDB storage (SQLite/PostgreSQL, heartbeats + retries) or a journal file (no heartbeats)."""
    import optuna

    url = url or cfg.storage
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs = {}
    if url.startswith("postgresql"):
        # Credentials come from PGUSER/PGPASSWORD (libpq reads them); a small pool per worker keeps
        # N workers x pool_size under PostgreSQL's max_connections.
        url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        kwargs["engine_kwargs"] = {"pool_size": cfg.pool_size, "max_overflow": 0, "pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.heartbeat_interval * 3,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=cfg.max_retries), **kwargs)
    except Exception as exc:  # SQLAlchemy/psycopg2 raise many types; all mean "storage unusable"
        raise PipelineError(f"tune.storage {url}: cannot open the study storage ({str(exc).splitlines()[0]})") from None


def _sampler(cfg: TuneConfig, seed: int):
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, max(1, cfg.n_trials // 3)))


def _pruner(cfg: TuneConfig):
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    return optuna.pruners.NopPruner()


def create_study(params: Params, storage_url: str | None = None, worker: int = 0):
    """Create the study if it does not exist yet (run once before workers start), or load it."""
    import optuna

    cfg = params.tune
    direction = "maximize" if cfg.metric.endswith("accuracy") else "minimize"
    return optuna.create_study(study_name=study_name(params), storage=make_storage(cfg, storage_url),
                               direction=direction, sampler=_sampler(cfg, params.seed + worker),
                               pruner=_pruner(cfg), load_if_exists=True)


def counts(study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


def freeze_points(backbone) -> list[float]:
    """The effective freeze ratios of the backbone's valid boundaries."""
    from components.backbones import cut_points

    total = len(backbone.layers) - 1
    return [k / total for k in cut_points(backbone)]


def suggest(trial, cfg: TuneConfig, points: list[float]):
    """Sample a trial's hyperparameters; freeze ratio is an index into the real boundaries in range."""
    low, high = cfg.freeze_ratio
    inside = [p for p in points if low - 1e-9 <= p <= high + 1e-9] or [min(points, key=lambda p: abs(p - low))]
    index = trial.suggest_int("freeze_point", 0, len(inside) - 1)
    ratio = inside[index]
    trial.set_user_attr("freeze_ratio", ratio)
    lr = trial.suggest_float("learning_rate", *cfg.learning_rate, log=True)
    dropout = trial.suggest_float("dropout", *cfg.dropout) if cfg.dropout else None
    units = trial.suggest_int("head_units", *cfg.head_units, log=True) if cfg.head_units else None
    return ratio, lr, dropout, units


class Worker:
    """Loads data and backbone once; runs trials of the shared study until n_trials finished in total."""

    def __init__(self, params: Params, subset: Path, head: Path, augmented: Path | None, cache_dir: Path,
                 storage_url: str | None = None, worker: int = 0):
        from components.backbones import load_backbone
        from components.tracking import content_hash
        from components.tune_trial import ActivationCache, load_trial_data

        self.params, self.head, self.storage_url, self.worker = params, head, storage_url, worker
        self.data = load_trial_data(subset, augmented, params.model.image_size)
        self.backbone_source = lambda: load_backbone(params.model, params.storage.endpoint_url)
        backbone_file = Path(params.model.backbone)
        self.identity = (content_hash(backbone_file) if backbone_file.is_file()
                         else f"{params.model.backbone}:{params.model.weights}:{params.model.image_size}")
        self.points = freeze_points(self.backbone_source())
        cfg = params.tune
        self.cache = ActivationCache(cache_dir, cfg.cache_max_bytes, cfg.cache_dtype) if cfg.cache else None

    def objective(self, trial) -> float:
        """Train one trial (pruned on the per-epoch metric), logged as a nested MLflow run."""
        import keras
        import mlflow
        from optuna_integration import KerasPruningCallback

        from components.fine_tune import HyperParams
        from components.tracking import EpochLogger
        from components.tune_trial import run_trial

        cfg = self.params.tune
        ratio, lr, dropout, units = suggest(trial, cfg, self.points)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("pid", os.getpid())
        hp = HyperParams(ratio, lr, self.params.model.dropout if dropout is None else dropout,
                         self.params.model.head_units if units is None else units)

        class Epochs(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                trial.set_user_attr("epochs_run", epoch + 1)

        with mlflow.start_run(run_name=f"trial {trial.number}", nested=True,
                              tags={"tlpipe.step": "tune", "optuna.trial": str(trial.number),
                                    "optuna.study": trial.study.study_name, "tlpipe.worker": str(self.worker)}):
            mlflow.log_params({"freeze_ratio": ratio, "learning_rate": lr, "dropout": hp.dropout,
                               "head_units": hp.head_units})
            state = "failed"
            try:
                result = run_trial(self.params, hp, self.data, self.backbone_source(), self.head, self.cache,
                                   self.identity, cfg.epochs,
                                   callbacks=[Epochs(), EpochLogger(), KerasPruningCallback(trial, cfg.metric)])
                values = result["history"][cfg.metric]
                best = max(values) if cfg.metric.endswith("accuracy") else min(values)
                trial.set_user_attr("mode", result["mode"])
                trial.set_user_attr("frozen_layers", result["plan"].frozen)
                trial.set_user_attr("boundary", result["plan"].boundary)
                mlflow.log_metric(f"best_{cfg.metric}", best)
                state = "complete"
                return best
            except Exception as exc:
                import optuna

                state = "pruned" if isinstance(exc, optuna.TrialPruned) else "failed"
                raise
            finally:
                mlflow.set_tag("optuna.state", state)

    def work(self, study) -> int:
        """Take trials until tune.n_trials are finished in the study (all workers together)."""
        import optuna
        from optuna.storages import fail_stale_trials

        cfg = self.params.tune
        started = time.monotonic()
        ran = 0
        while True:
            state = counts(study)
            finished = sum(state.get(s, 0) for s in FINISHED)
            if finished >= cfg.n_trials:
                return ran
            if cfg.timeout and time.monotonic() - started > cfg.timeout:
                print(f"tune: worker {self.worker} stops at tune.timeout={cfg.timeout}s")
                return ran
            if finished + state.get("RUNNING", 0) >= cfg.n_trials and not state.get("WAITING", 0):
                # Others hold the remaining trials; wait, and reclaim any whose worker died.
                time.sleep(max(1, cfg.heartbeat_interval // 2))
                if isinstance(study._storage, optuna.storages.RDBStorage):
                    fail_stale_trials(study)
                continue
            study.optimize(self.objective, n_trials=1, catch=(ValueError, ArithmeticError))
            ran += 1


def summarize(study, out_dir: Path, params: Params) -> dict:
    """Write best_params.json, trials.csv and the three plots; return the summary."""
    from components.tune_plots import plot_all

    cfg = params.tune
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED + ("FAIL",)]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        raise PipelineError(f"study {study.study_name}: no trial completed ({counts(study)}); see the MLflow runs")
    best = study.best_trial
    chosen = {"freeze_ratio": best.user_attrs["freeze_ratio"], "learning_rate": best.params["learning_rate"]}
    chosen.update({k: best.params[k] for k in ("dropout", "head_units") if k in best.params})
    summary = {"source": "study", "study_name": study.study_name, "metric": cfg.metric, "value": best.value,
               "trial": best.number, "params": chosen, "boundary": best.user_attrs.get("boundary"),
               "states": counts(study), "epochs_run": sum(t.user_attrs.get("epochs_run", 0) for t in trials)}
    (out_dir / "best_params.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_all(study, trials, out_dir, cfg.metric)
    return summary


def from_params_summary(params: Params, out_dir: Path) -> dict:
    """tune.enabled: false: the fine_tune params are the 'best' params (plots say tuning was off)."""
    from components.tune_plots import plot_disabled

    summary = {"source": "params", "params": {"freeze_ratio": params.fine_tune.freeze_ratio,
                                              "learning_rate": params.fine_tune.learning_rate}}
    (out_dir / "best_params.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_disabled(out_dir)
    return summary


def _log_summary(summary: dict, out_dir: Path) -> None:
    import mlflow

    mlflow.log_dict(summary, "best_params.json")
    for png in sorted(out_dir.glob("*.png")):
        mlflow.log_artifact(str(png))
    if "value" in summary:
        mlflow.log_metric(f"best_{summary['metric']}", summary["value"])
        mlflow.log_params({f"best.{k}": v for k, v in summary["params"].items()})


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("tune", __doc__)
    p.add_argument("command", choices=("create-study", "worker", "summarize", "run"))
    p.add_argument("--storage", help="override tune.storage (credentials come from PGUSER/PGPASSWORD)")
    p.add_argument("--subset", help="make_subset's folder (worker, run)")
    p.add_argument("--head", help="train_head's .keras (worker, run)")
    p.add_argument("--augmented", help="augment's train.npz (worker, run)")
    p.add_argument("--out", help="folder for best_params.json and plots (summarize, run)")
    p.add_argument("--cache-dir", default="checkpoints/tune_cache", help="activation cache")
    p.add_argument("--worker-index", type=int, default=0, help="seeds this worker's sampler")
    args = p.parse_args(argv)
    need = {"worker": ("subset", "head"), "run": ("subset", "head", "out"), "summarize": ("out",)}
    missing = [f"--{n}" for n in need.get(args.command, ()) if not getattr(args, n)]
    if missing:
        raise PipelineError(f"tune {args.command} needs {', '.join(missing)}")
    return args


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.tune {create-study,worker,summarize,run} ...`."""
    args = _args(argv)
    params = load_params(args.params)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.command == "run" and not params.tune.enabled:
        with atomic_dir(args.out) as staged:
            from_params_summary(params, staged)
        print(f"tune: disabled (tune.enabled: false); fine_tune uses its params -> {args.out}")
        return
    if args.command == "create-study":
        from components.tracking import prepare

        prepare(params)  # the tracking store and pipeline run exist before the workers race to make them
        study = create_study(params, args.storage)
        print(f"tune: study {study.study_name} ready ({counts(study) or 'no trials yet'})")
        return
    from components.tracking import step_run

    with step_run(params, "tune", {k: v for k, v in (("subset", args.subset), ("head", args.head)) if v}):
        import mlflow

        mlflow.set_tag("optuna.study", study_name(params))
        study = create_study(params, args.storage, args.worker_index)
        if args.command in ("worker", "run"):
            worker = Worker(params, Path(args.subset), Path(args.head),
                            Path(args.augmented) if args.augmented else None, Path(args.cache_dir),
                            args.storage, args.worker_index)
            ran = worker.work(study)
            print(f"tune: worker {args.worker_index} ran {ran} trials; study {study.study_name}: {counts(study)}")
        if args.command in ("summarize", "run"):
            with atomic_dir(args.out) as staged:
                summary = summarize(study, staged, params)
                _log_summary(summary, staged)
            print(f"tune: best {summary['metric']} {summary['value']:.4f} (trial {summary['trial']}): "
                  f"{summary['params']} -> {args.out}")


if __name__ == "__main__":
    run_main(main)
