"""Pruning, judged on the final model: epochs spent, and the test accuracy of fine-tuning the study's best params.

For each seed and pruner candidate, one study runs exactly as the `tune` step runs it (`StudyContext` of
tlpipe/tuning/context.py for the recipe and search space, `Worker.work` for the trials, `summarize` for
best_params.json) with the committed params (val_loss, early stopping, regimes, train_bn search); only the
pruner differs (the study is created with `tlpipe.tuning.study.sampler` and the candidate). The unpruned
study (`none`) is the reference. Then `fine_tune`'s code trains the final model from every distinct best
params and scores the test split (benchmarks.study_cost.fine_tune_test).

Goal per seed: pruned epochs <= 0.6 x the unpruned study's, and final test accuracy >= the unpruned
study's minus one test image. The project (data, backbone, head: seed 42) is built once; the seed varies
the study's sampler and the trials' and fine-tune's seeds, as the top-level `seed` does.

    python -m benchmarks.pruning --seeds 42 43 44 45 46
    python -m benchmarks.pruning report    # recompute rows, decision and notes of --out from its studies

The notes are computed from the studies' trials (per-seed misses: epochs spent, trials run to the cap, where the
TPE path leaves the unpruned study's, whether the unpruned study's best point was pruned); hand-written
observations go in the JSON's `extra_notes` and are kept by `report`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.pruning_notes import report, rewrite
from benchmarks.study_cost import REPO, UPSTREAM, _load, fine_tune_test, overrides, run_child
from benchmarks.study_cost_arms import project_context


def candidates(cfg) -> dict:
    """Pruner name -> factory; `median` is the product's default (tlpipe.tuning.study.pruner)."""
    import optuna
    from optuna.pruners import (
        MedianPruner,
        NopPruner,
        PatientPruner,
        PercentilePruner,
        SuccessiveHalvingPruner,
        WilcoxonPruner,
    )

    from tlpipe.tuning.study import pruner

    return {
        "none": NopPruner,
        "median": lambda: pruner(cfg.model_copy(update={"pruner": "median"})),
        "median_w2": lambda: MedianPruner(n_startup_trials=2, n_warmup_steps=2),
        "median_s4_w1": lambda: MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        "patient_median": lambda: PatientPruner(MedianPruner(n_startup_trials=2, n_warmup_steps=1), patience=1),
        "wilcoxon": lambda: WilcoxonPruner(p_threshold=0.1, n_startup_steps=2),
        "sha_r2": lambda: SuccessiveHalvingPruner(min_resource=2, reduction_factor=3),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs),
        "percentile_33": lambda: PercentilePruner(33.0, n_startup_trials=2, n_warmup_steps=1),
        "percentile_25": lambda: PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=1),
    }


def write_params(root: Path, seed: int, trials: int | None = None, extra: dict | None = None) -> Path:
    """params.yaml as committed, with this seed, the stores inside `root` and no sweep (+ smoke-test overrides)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for key, value in (extra or {}).items():
        section, _, name = key.partition(".")
        params[section][name] = value
    params["seed"] = seed
    params["tracking"]["default_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    params["tune"].update(storage=f"sqlite:///{root / 'optuna.db'}", sweep=False)
    if trials:
        params["tune"]["n_trials"] = trials
    path = root / ("params.yaml" if seed == 42 else f"params-{seed}.yaml")
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def studies(root: Path, seed: int, names: list[str], trials: int | None, out: Path, extra: dict) -> None:
    """Child: one study per candidate for this seed; summaries into `out`."""
    import mlflow
    import optuna

    from tlpipe.config import load_params
    from tlpipe.contracts import BestParams
    from tlpipe.tuning.study import make_storage, sampler
    from tlpipe.tuning.worker import summarize

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = load_params(write_params(root, seed, trials, extra))
    mlflow.set_tracking_uri(params.tracking.default_uri)
    ctx = project_context(root, params)
    cfg = ctx.cfg
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        if name in results:
            continue
        storage = root / "studies" / f"{name}-{seed}.db"
        storage.unlink(missing_ok=True)
        # Every study starts from a cold activation cache, as `tune` on new data does: otherwise the studies run
        # later would find the boundaries the earlier ones cached and win wall time they did not earn.
        shutil.rmtree(root / "checkpoints" / "tune_cache", ignore_errors=True)
        storage.parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=ctx.study_name,
            storage=make_storage(cfg, f"sqlite:///{storage}"),
            direction="minimize",
            sampler=sampler(cfg, seed),
            pruner=candidates(cfg)[name](),
        )
        t0 = time.perf_counter()
        ctx.worker().work(study)
        seconds = time.perf_counter() - t0
        summary_dir = root / "studies" / f"{name}-{seed}"
        shutil.rmtree(summary_dir, ignore_errors=True)
        summarize(study, cfg, summary_dir, "n_trials")
        best = BestParams.read(summary_dir)
        trials_out = [
            {
                "n": t.number,
                "state": t.state.name,
                "value": t.value,
                "last": (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None),
                "epochs": t.user_attrs.get("epochs_run"),
                "regime": t.user_attrs.get("regime"),
                "freeze_ratio": t.user_attrs.get("freeze_ratio"),
                "lr": t.params.get("learning_rate"),
                "train_bn": t.user_attrs.get("train_bn"),
            }
            for t in study.get_trials(deepcopy=False)
        ]
        results[name] = {
            "seconds": round(seconds, 1),
            "epochs": best.epochs_run,
            "best": best.value,
            "best_trial": best.trial,
            "states": best.states,
            "params": best.params.model_dump() if best.params else {},
            "trials": trials_out,
        }
        out.write_text(json.dumps(results, indent=1))
        print(
            f"seed {seed} {name}: {best.epochs_run} epochs, best {best.value:.4f}, {best.states}, {seconds:.0f} s",
            flush=True,
        )


def finals(root: Path, seed: int, trials: int | None, out: Path, extra: dict) -> None:
    """Child: fine-tune each distinct best params of this seed's studies; test accuracy per candidate."""
    from tlpipe.config import load_params
    from tlpipe.contracts import HyperParams

    results = json.loads(out.read_text())
    params = load_params(write_params(root, seed, trials, extra))
    done: dict[str, dict] = {}
    for res in results.values():
        key = json.dumps(res["params"], sort_keys=True)
        if key not in done:
            done[key] = res.get("final") or fine_tune_test(
                root, params, HyperParams(**res["params"]), root / "fine_tune_work"
            )
        res["final"] = done[key]
        out.write_text(json.dumps(results, indent=1))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="bench", choices=("bench", "build", "studies", "finals", "report"))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    p.add_argument(
        "--pruners",
        nargs="+",
        default=["none", "median", "median_w2", "median_s4_w1", "patient_median", "wilcoxon", "sha_r2"],
    )
    p.add_argument("--trials", type=int, help="override tune.n_trials (smoke tests)")
    p.add_argument("--set", action="append", default=[], help="params override section.key=value (smoke tests)")
    p.add_argument("--work", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/pruning.json")
    p.add_argument("--root", type=Path)
    p.add_argument("--seed", type=int)
    p.add_argument("--result", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "build":
        from pipelines.local import run_steps

        return run_steps(args.root, UPSTREAM, write_params(args.root, 42, args.trials, overrides(args.set)))
    if args.command == "studies":
        return studies(args.root, args.seed, args.pruners, args.trials, args.result, overrides(args.set))
    if args.command == "finals":
        return finals(args.root, args.seed, args.trials, args.result, overrides(args.set))
    if args.command == "report":  # recompute rows, decision and notes of --out from its studies
        return rewrite(args.out)
    started, load_start = time.perf_counter(), _load()
    work = args.work or Path(tempfile.mkdtemp(prefix="tlpipe-pruning-"))
    root, log = work / "project", work / "log.txt"
    root.mkdir(parents=True, exist_ok=True)
    trials = (["--trials", str(args.trials)] if args.trials else []) + [x for p in args.set for x in ("--set", p)]
    if not (root / "models/head").is_dir():
        run_child(["build", "--root", str(root), *trials], log, module="benchmarks.pruning")
    results, loads = {}, {}
    for seed in args.seeds:
        out = work / f"seed{seed}.json"
        loads[seed] = _load()
        for command in ("studies", "finals"):
            run_child(
                [
                    command,
                    "--root",
                    str(root),
                    "--seed",
                    str(seed),
                    "--result",
                    str(out),
                    "--pruners",
                    *args.pruners,
                    *trials,
                ],
                log,
                module="benchmarks.pruning",
            )
        results[seed] = json.loads(out.read_text())
        result = report(args, results, loads, load_start, work, started)  # after every seed: partial results
    return result


if __name__ == "__main__":
    main()
