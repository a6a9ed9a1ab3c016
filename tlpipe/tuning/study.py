"""The Optuna study: its identity, storage, sampler, pruner and search space.

The study name carries a fingerprint of everything a trial's value depends on: the training and
validation images (the manifest's hashes), the augmented copies, the backbone's bytes (or application +
weights), the warm-start head, the search space and the trial recipe. Same fingerprint = the same study,
resumed; any change = a new study, so trials of two datasets or two backbones never mix.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from tlpipe.errors import PipelineError
from tlpipe.redact import holds_credentials, redact, redact_text
from tlpipe.sections import TuneConfig

FINISHED = ("COMPLETE", "PRUNED")
# Keys of `tune` that decide how long or where a study runs, not what a trial computes.
VOLATILE = (
    "n_trials",
    "timeout",
    "storage",
    "enabled",
    "study_name",
    "heartbeat_interval",
    "max_retries",
    "pool_size",
    "cache_max_bytes",
    "cache_disk_bytes",
    "sweep",
    "sweep_points",
    "sweep_seeds",
    "warm_start",
)


def study_fingerprint(
    cfg: TuneConfig, recipe: dict, subset: Path, augmented: Path | None, head: Path | None, backbone_identity: str
) -> str:
    """sha256 (12 hex) over the data, backbone, head, search space and recipe."""
    from tlpipe.data.identity import split_ids
    from tlpipe.fingerprint import content_hash, digest

    parts = {
        "data": split_ids(subset, ("train", "val")),
        "augmented": content_hash(augmented) if augmented and Path(augmented).exists() else "",
        "head": content_hash(head) if head and Path(head).exists() else "",
        "backbone": backbone_identity,
        "space": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in VOLATILE},
        "recipe": recipe,
    }
    return digest(parts, 12)


def make_storage(cfg: TuneConfig, url: str | None = None):
    """RDB storage (SQLite/PostgreSQL, heartbeats + retries) or a journal file (no heartbeats)."""
    import optuna

    url = url or cfg.storage
    if holds_credentials(url):
        raise PipelineError(
            f"tune storage {redact(url)} holds credentials; put them in PGUSER/PGPASSWORD (environment), not in the URL"
        )
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    from tlpipe.tracking.stores import sql_uri

    kwargs = {}
    if url.startswith("postgresql"):
        # Credentials come from PGUSER/PGPASSWORD (libpq reads them); a small pool per worker keeps
        # N workers x pool_size under PostgreSQL's max_connections (infra/README.md has the arithmetic).
        url = sql_uri(url)
        kwargs["engine_kwargs"] = {"pool_size": cfg.pool_size, "max_overflow": 0, "pool_pre_ping": True}
    elif url.startswith("sqlite"):
        # Workers sharing one SQLite file (dvc repro, make run-local) wait for each other's writes; sqlite3's
        # 5 s default lock wait can run out on a loaded machine and fail a worker with "database is locked".
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=cfg.heartbeat_interval * 3,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retries),
            **kwargs,
        )
    except Exception as exc:  # SQLAlchemy/psycopg2 raise many types; all mean "storage unusable"
        reason = redact_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        raise PipelineError(f"tune storage {redact(url)}: cannot open the study storage ({reason})") from None


def sampler(cfg: TuneConfig, seed: int):
    """TPE (constant liar, so concurrent workers do not propose the same point) or random, seeded."""
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, max(1, cfg.n_trials // 3)), constant_liar=True)


def pruner(cfg: TuneConfig):
    """The configured pruner (median after a warm-up epoch, hyperband, or none)."""
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if cfg.pruner == "hyperband":
        # The lowest rung is a full patience window, not one epoch: a one-epoch rung alone would decide
        # against every slow starter (tlpipe.tuning.budget).
        from tlpipe.tuning.budget import max_epochs

        return optuna.pruners.HyperbandPruner(min_resource=min(cfg.patience, cfg.epochs), max_resource=max_epochs(cfg))
    return optuna.pruners.NopPruner()


def create_study(cfg: TuneConfig, name: str, seed: int, storage_url: str | None = None, worker: int = 0):
    """Create the study if it does not exist yet (once, before workers start), or load it."""
    import optuna

    direction = "maximize" if cfg.metric.endswith("accuracy") else "minimize"
    study = optuna.create_study(
        study_name=name,
        storage=make_storage(cfg, storage_url),
        direction=direction,
        sampler=sampler(cfg, seed + worker),
        pruner=pruner(cfg),
        load_if_exists=True,
    )
    if study.metric_names != [cfg.metric]:  # optuna-dashboard shows this name instead of "Objective 0"
        study.set_metric_names([cfg.metric])
    return study


def counts(study) -> dict[str, int]:
    """Trials per state name."""
    out: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out


def finished(study) -> int:
    """Complete + pruned trials."""
    state = counts(study)
    return sum(state.get(s, 0) for s in FINISHED)


def freeze_points(backbone) -> list[float]:
    """The effective freeze ratios of the backbone's valid boundaries."""
    from tlpipe.models.backbones import cut_points

    total = len(backbone.layers) - 1
    return [k / total for k in cut_points(backbone)]


def inside_points(cfg: TuneConfig, points: list[float]) -> list[float]:
    """The freeze points inside tune.freeze_ratio (the nearest one when none is)."""
    low, high = cfg.freeze_ratio
    return [p for p in points if low - 1e-9 <= p <= high + 1e-9] or [min(points, key=lambda p: abs(p - low))]


def previous_best(study, cfg: TuneConfig, storage_url: str | None = None) -> tuple[str, list]:
    """The latest other study of the same `tune.study_name` in this storage, and its best complete trials.

    A new data version (or backbone) makes a new study; its first trials are then the previous study's
    `tune.warm_start` best points instead of the same seeded samples again.
    """
    import optuna

    storage = make_storage(cfg, storage_url)
    others = [
        s
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if s.study_name != study.study_name
        and s.study_name.startswith(f"{cfg.study_name}-")
        and s.datetime_start is not None
    ]
    if not others or not cfg.warm_start:
        return "", []
    latest = max(others, key=lambda s: s.datetime_start or datetime.min)
    old = optuna.load_study(study_name=latest.study_name, storage=storage)
    done = [t for t in old.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    done.sort(key=lambda t: float(t.value or 0.0), reverse=old.direction.name == "MAXIMIZE")
    return latest.study_name, done[: cfg.warm_start]


def warm_start(
    study, cfg: TuneConfig, points: list[float], regimes: list[str], storage_url: str | None = None
) -> list[dict]:
    """Enqueue the previous study's best points into an empty study; returns the params enqueued.

    Points this study cannot take (a regime it does not search, a freeze point beyond its range) are skipped.
    """
    if study.get_trials(deepcopy=False):
        return []
    source, best = previous_best(study, cfg, storage_url)
    queued = []
    for trial in best:
        params = dict(trial.params)
        regime = params.get("regime", regimes[0])
        shown = [round(p, 4) for p in inside_points(cfg, points)]
        if regime not in regimes or ("freeze_ratio" in params and params["freeze_ratio"] not in shown):
            continue
        if len(regimes) == 1:
            params.pop("regime", None)
        study.enqueue_trial(params, user_attrs={"warm_start_from": source}, skip_if_exists=True)
        queued.append(params)
    return queued


def suggest(trial, cfg: TuneConfig, points: list[float], regimes: list[str]) -> dict:
    """Sample a trial's hyperparameters: the regime, then (for transfer) a real freeze boundary in range.

    Returns:
        HyperParams fields without the defaults a study does not search (dropout, head_units when fixed).
    """
    regime = trial.suggest_categorical("regime", regimes) if len(regimes) > 1 else regimes[0]
    out: dict = {"regime": regime, "freeze_ratio": 0.0, "train_bn": regime == "scratch"}
    if regime == "transfer":
        inside = inside_points(cfg, points)
        # One name everywhere: the searched param is the freeze ratio itself, one of the real boundaries.
        shown = [round(p, 4) for p in inside]
        out["freeze_ratio"] = inside[shown.index(trial.suggest_categorical("freeze_ratio", shown))]
        if cfg.search_bn:
            out["train_bn"] = trial.suggest_categorical("train_bn", [False, True])
    trial.set_user_attr("freeze_ratio", out["freeze_ratio"])
    trial.set_user_attr("regime", regime)
    out["learning_rate"] = trial.suggest_float("learning_rate", *cfg.learning_rate, log=True)
    if cfg.dropout:
        out["dropout"] = trial.suggest_float("dropout", *cfg.dropout)
    if cfg.head_units:
        out["head_units"] = trial.suggest_int("head_units", *cfg.head_units, log=True)
    return out
