"""The study_cost benchmark's two arms: tlpipe's tune step and the naive study a skilled user would write."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_params(
    root: Path, seed: int, size: int, trials: int, storage: Path | None = None, overrides: dict | None = None
) -> Path:
    """params.yaml of the benchmark project (committed params + size, transfer-only search, no sweep)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["seed"] = seed
    params["make_digits"]["image_size"] = params["model"]["image_size"] = size
    params["tracking"]["default_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    params["tune"].update(
        n_trials=trials,
        regimes=["transfer"],
        search_bn=False,
        sweep=False,
        warm_start=0,
        storage=f"sqlite:///{storage or root / 'optuna.db'}",
    )
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        params[section][name] = value
    path = (storage.parent if storage else root) / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def study_facts(study, started: dt.datetime) -> dict:
    """Best value, when it was reached, states and epochs of a finished study."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    best = study.best_trial
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "best": best.value,
        "best_trial": best.number,
        "to_best_s": (best.datetime_complete - started).total_seconds(),
        "params": {"freeze_ratio": best.user_attrs["freeze_ratio"], "learning_rate": best.params["learning_rate"]},
        "states": states,
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "trial_s_sum": round(sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials), 2),
        "trials": [
            {
                "n": t.number,
                "state": t.state.name,
                "value": t.value,
                "freeze_ratio": t.user_attrs.get("freeze_ratio"),
                "lr": t.params.get("learning_rate"),
                "epochs": t.user_attrs.get("epochs_run"),
                "params": dict(t.params),
            }
            for t in trials
        ],
    }


def preimport() -> None:
    """The libraries both arms load, imported before either clock starts (process start-up is not the study)."""
    import keras  # noqa: F401
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import optuna_integration  # noqa: F401
    import tensorflow  # noqa: F401
    import tf_keras.preprocessing.image  # noqa: F401

    import tlpipe.models.backbones  # noqa: F401
    import tlpipe.tuning.context  # noqa: F401
    import tlpipe.tuning.worker  # noqa: F401


def project_context(root: Path, params):
    """The tune step's StudyContext on a benchmark project (the folders the `build` child writes)."""
    from tlpipe.tuning.context import StudyContext

    return StudyContext(
        params,
        subset=root / "data/subset",
        augmented=root / "data/augmented",
        head=root / "models/head",
        backbone=str(root / "models/backbone"),
        cache_dir=root / "checkpoints/tune_cache",
    )


def enqueue_points(root: Path, params_path: Path, naive_run: Path) -> int:
    """Replay: the naive study's points, in its order, enqueued in the tune step's own study (not timed).

    The tune step then evaluates exactly those points (Optuna runs enqueued trials before sampling), so the two
    arms differ only in how a trial is computed (the activation cache, fixed augmented copies) and in what the
    pruner decides on those values, not in the path TPE takes after a near-tie.
    """
    from tlpipe.config import load_params

    study = project_context(root, load_params(params_path)).study()
    points = [t["params"] for t in json.loads(naive_run.read_text())["trials"]]
    for point in points:
        study.enqueue_trial(point)
    return len(points)


def arm_tlpipe(
    root: Path, seed: int, size: int, trials: int, out: Path, extra: dict, replay: str | None = None
) -> None:
    """The real tune step, cold activation cache, its own Optuna storage; `replay`: the naive run's points."""
    import optuna

    from pipelines.local import run_steps

    preimport()

    run = out.parent
    shutil.rmtree(run, ignore_errors=True)
    params = write_params(root, seed, size, trials, storage=run / "optuna.db", overrides=extra)
    replayed = enqueue_points(root, params, Path(replay)) if replay else 0
    shutil.rmtree(root / "checkpoints" / "tune_cache", ignore_errors=True)
    started, t0 = dt.datetime.now(), time.perf_counter()
    run_steps(root, ["tune"], params)
    seconds = time.perf_counter() - t0
    best = json.loads((root / "reports" / "tune" / "best_params.json").read_text())
    study = optuna.load_study(study_name=best["study_name"], storage=f"sqlite:///{run / 'optuna.db'}")
    facts = study_facts(study, started)
    modes = {}
    for t in study.get_trials(deepcopy=False):
        modes[t.user_attrs.get("mode", "pruned")] = modes.get(t.user_attrs.get("mode", "pruned"), 0) + 1
    out.write_text(
        json.dumps(
            {
                "arm": "tlpipe",
                "seed": seed,
                "size": size,
                "seconds": seconds,
                **facts,
                "modes": modes,
                "best_params": best["params"],
                "replayed": replayed,
            },
            indent=1,
        )
    )


def overrides(pairs: list[str]) -> dict:
    return {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in pairs)}
