"""Part 5 of the tune_trials benchmark: a study with and without pruning, run through the product's Worker."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

P5_EPOCHS_TARGET = 0.6  # pruned study spends <= 0.6 of the unpruned study's epochs


P5_BEST_TOLERANCE = 0.01  # pruned best within 1 % of the unpruned best


def run_study(root: Path, params_file: Path, pruner: str, seed: int, trials: int, epochs: int) -> dict:
    """One study through the product's create_study + Worker (own SQLite storage and cache); its facts."""
    import mlflow

    from tlpipe.config import load_params
    from tlpipe.contracts import HEAD_FILE
    from tlpipe.models.backbones import backbone_identity, load_backbone, preprocess_mode
    from tlpipe.tuning.study import FINISHED, counts, create_study
    from tlpipe.tuning.trial import Recipe
    from tlpipe.tuning.worker import Defaults, Worker, WorkerSetup

    folder = root / f"p5_seed{seed}_{pruner}"
    folder.mkdir()
    params = load_params(
        params_file,
        {
            "seed": seed,
            "tune.pruner": pruner,
            "tune.n_trials": trials,
            "tune.epochs": epochs,
            "tune.storage": f"sqlite:///{folder / 'optuna.db'}",
        },
    )
    cfg, model, spec = params.tune, params.model, str(root / "models/backbone")
    # The tune step's study, recipe and worker (tlpipe/tuning/context.py), built from the library.
    recipe = Recipe(
        seed=params.seed,
        image_size=model.image_size,
        preprocess=preprocess_mode(spec),
        batch_size=params.fine_tune.batch_size,
        epochs=cfg.epochs,
        patience=cfg.patience,
        monitor=cfg.metric,
    )
    start = time.perf_counter()
    study = create_study(cfg, f"{cfg.study_name}-p5-seed{seed}-{pruner}", params.seed)
    worker = Worker(
        WorkerSetup(
            cfg=cfg,
            recipe=recipe,
            defaults=Defaults(model.dropout, model.head_units),
            subset=root / "data/subset",
            head=root / "models/head" / HEAD_FILE,
            augmented=root / "data/augmented",
            cache_dir=folder / "cache",
            load_backbone=lambda: load_backbone(spec, model.weights, model.image_size),
            identity=backbone_identity(spec, model.weights, model.image_size),
        )
    )
    with mlflow.start_run(run_name=f"p5 seed={seed} pruner={pruner}"):
        worker.work(study)
    wall = time.perf_counter() - start
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name in (*FINISHED, "FAIL")]
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "params": dict(t.params),
            "regime": t.user_attrs.get("regime", "transfer"),
            "freeze_ratio": round(t.user_attrs["freeze_ratio"], 4),
            "learning_rate": t.params["learning_rate"],
            "mode": t.user_attrs.get("mode"),
            "epochs_run": t.user_attrs.get("epochs_run", 0),
            "value": t.value,
            "last_value": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
        }
        for t in done
    ]
    best = study.best_trial
    return {
        "pruner": pruner,
        "study_name": study.study_name,
        "direction": study.direction.name,
        "states": counts(study),
        "epochs_spent": sum(r["epochs_run"] for r in rows),
        "epochs_budget": trials * epochs,
        "best_value": best.value,
        "best_trial": best.number,
        "best_params": {
            "regime": best.user_attrs.get("regime", "transfer"),
            "freeze_ratio": best.user_attrs["freeze_ratio"],
            "learning_rate": best.params["learning_rate"],
        },
        "wall_seconds": round(wall, 2),
        "trials": rows,
    }


def lost_winners(unpruned: dict, pruned: dict) -> list[int]:
    """Pruned trials whose unpruned twin (same number and params) beat the pruned study's best."""
    better = (lambda a, b: a > b) if unpruned["direction"] == "MAXIMIZE" else (lambda a, b: a < b)
    twins = {t["number"]: t for t in unpruned["trials"]}
    lost = []
    for t in pruned["trials"]:
        twin = twins.get(t["number"])
        if t["state"] != "PRUNED" or twin is None or twin["value"] is None:
            continue
        same = twin["params"] == t["params"]  # the same sampled point (regime, boundary, BatchNorm, rate)
        if same and better(twin["value"], pruned["best_value"]):
            lost.append(t["number"])
    return lost


def p5_pair(root: Path, params_file: Path, seed: int, trials: int, epochs: int) -> dict:
    """Unpruned and median-pruned studies with one seed; epochs spent and best values compared."""
    unpruned = run_study(root, params_file, "none", seed, trials, epochs)
    pruned = run_study(root, params_file, "median", seed, trials, epochs)
    for s in (unpruned, pruned):
        print(
            f"P5 seed {seed} pruner={s['pruner']}: {s['epochs_spent']} epochs, best {s['best_value']:.4f}, "
            f"{s['states']}, {s['wall_seconds']:.0f} s",
            flush=True,
        )
    epochs_ratio = pruned["epochs_spent"] / unpruned["epochs_spent"]
    sign = 1 if unpruned["direction"] == "MAXIMIZE" else -1
    shortfall = sign * (unpruned["best_value"] - pruned["best_value"]) / abs(unpruned["best_value"])
    return {
        "seed": seed,
        "epochs_ratio": round(epochs_ratio, 4),
        "epochs_pass": bool(epochs_ratio <= P5_EPOCHS_TARGET),
        "best_shortfall": round(shortfall, 5),
        "best_pass": bool(shortfall <= P5_BEST_TOLERANCE),
        "pruned_trials_that_would_have_won": lost_winners(unpruned, pruned),
        "unpruned": unpruned,
        "pruned": pruned,
    }


def bench_p5(root: Path, params_file: Path, trials: int, epochs: int, seeds: list[int]) -> dict:
    """One (no pruning, median pruner) pair of studies per seed, in the product's tune code paths."""
    import mlflow
    import optuna

    from tlpipe.config import load_params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = load_params(params_file)
    mlflow.set_tracking_uri(params.tracking.default_uri)
    mlflow.set_experiment("bench-tune-trials")  # creates the tracking tables before any study is timed
    pairs = [p5_pair(root, params_file, seed, trials, epochs) for seed in seeds]
    spent = {k: sum(p[k]["epochs_spent"] for p in pairs) for k in ("unpruned", "pruned")}
    return {
        "metric": params.tune.metric,
        "trials": trials,
        "epochs_per_trial": epochs,
        "pruner_settings": "MedianPruner(n_startup_trials=2, n_warmup_steps=1) from tlpipe.tuning.study.pruner",
        "epochs_target": P5_EPOCHS_TARGET,
        "best_tolerance": P5_BEST_TOLERANCE,
        "best_shortfall_is": "(unpruned best - pruned best) / |unpruned best|, sign flipped for minimised "
        "metrics; <= 0 means the pruned study found as good or better",
        "pairs": pairs,
        "epochs_ratio_all_seeds": round(spent["pruned"] / spent["unpruned"], 4),
        "mean_best_shortfall": round(statistics.mean(p["best_shortfall"] for p in pairs), 5),
    }
