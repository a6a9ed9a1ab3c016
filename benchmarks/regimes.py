"""Regimes: does the final model beat both baselines (frozen features, from scratch) on the embedded default?

Runs the whole declared pipeline (`pipelines.local.run_steps`, every step as `dvc repro` would run it) on
params.yaml as committed, once per top-level `seed` (make_subset.seed stays fixed, so every run scores the same
200 test images), each in its own project folder (params.yaml, MLflow, Optuna) and child process. One row per
seed and regime from reports/evaluate/evaluation.json, plus what tuning chose and where fine-tuning stopped.
Goal per seed: final >= max(frozen, scratch) - 1/N_test (evaluate's `baseline_won` is its negation).

Variants (the investigation) are the same runs with params overrides (`--set fine_tune.epochs=8`) and a name
(`--variant old_recipe`); each variant's rows replace that variant's earlier rows in the JSON, so one file holds
them all. `--pin regime=transfer,freeze_ratio=0,learning_rate=1e-3,train_bn=true` skips the study and trains
fine_tune with exactly those hyperparameters (tuning's best_params.json written by hand), to isolate one factor.
`--work DIR` keeps the projects; `--upstream DIR` (a kept `--work`) copies each seed's steps up to train_head
from there and runs only tune onwards (refused if an override touches an upstream step's params).

    python -m benchmarks.regimes --seeds 42 43 44                      # the default, 3 seeds
    python -m benchmarks.regimes --variant old_recipe --set fine_tune.epochs=8 --set fine_tune.patience=3 ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.regimes_report import met, write_md
from tlpipe.config import parse_assignments, parse_value, with_overrides
from tlpipe.contracts import EvalMetrics

REPO = Path(__file__).resolve().parents[1]
REGIMES = ("final", "frozen_features", "scratch")
LATE = ("tune", "fine_tune", "train_scratch", "evaluate", "register")  # steps whose params variants change
UPSTREAM = (
    "data",
    "models/backbone",
    "models/head",
    "reports/validate_data",
    "reports/augment",
    "reports/pretrain_backbone",
    "reports/train_head",
)


def project(root: Path, seed: int, overrides: list[str], base: Path | None = None) -> Path:
    """A project folder with params.yaml as committed (or `base`), this seed, the stores inside it, the overrides."""
    params = yaml.safe_load((base or REPO / "params.yaml").read_text(encoding="utf-8"))
    params["seed"] = seed
    params["tracking"]["default_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    params["tune"]["storage"] = f"sqlite:///{root / 'optuna.db'}"
    params = with_overrides(params, parse_assignments(overrides, "--set"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def pin(root: Path, spec: str) -> None:
    """Write tune's best_params.json with exactly these hyperparameters (the study is skipped)."""
    from tlpipe.config import load_params
    from tlpipe.contracts import BestParams, HyperParams

    model = load_params(root / "params.yaml").model
    hp = {"dropout": model.dropout, "head_units": model.head_units, "freeze_ratio": 0.0, "learning_rate": 1e-4}
    hp.update({k: parse_value(v) for k, v in (item.split("=", 1) for item in spec.split(","))})
    BestParams(source="params", params=HyperParams(**hp), stopped_by="disabled").write(root / "reports" / "tune")


def child(root: Path, pinned: str | None, only_late: bool) -> None:
    """In the child process: run the pipeline's steps in `root` (all, or tune onwards)."""
    from pipelines.graph import build
    from pipelines.local import run_steps
    from tlpipe.config import load_params

    names = [s.name for s in build(load_params(root / "params.yaml"))]
    if only_late:
        names = [n for n in names if n in LATE]
    if pinned:
        pin(root, pinned)
        names = [n for n in names if n != "tune"]
    run_steps(root, names)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def failure(root: Path) -> str | None:
    """The last error line of a run whose pipeline did not finish (a step after evaluate failed), else None."""
    log = root / "run.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    if (root / "reports/register/registration.json").exists() or "Traceback" not in text:
        return None
    return next((line for line in reversed(text.splitlines()) if "Error" in line), "failed")


def collect(root: Path, seed: int, variant: str, seconds: float) -> list[dict]:
    """One row per regime from the project's reports."""
    metrics = read_json(root / f"reports/evaluate/{EvalMetrics.FILE}")
    run = read_json(root / "models/fine_tune/run.json")
    best = read_json(root / "reports/tune/best_params.json")
    fine = read_json(root / "reports/fine_tune/metrics.json")
    scratch_report = read_json(root / "reports/train_scratch/metrics.json")
    hp = run.get("hyperparameters", {})
    freeze = run.get("freeze", {})
    common = {
        "variant": variant,
        "seed": seed,
        "test_images": metrics["test_images"],
        "final_regime": metrics["regime"],
        "freeze_ratio": hp.get("freeze_ratio"),
        "frozen_layers": f"{freeze.get('frozen')}/{freeze.get('total')}",
        "boundary": freeze.get("boundary"),
        "train_bn": hp.get("train_bn"),
        "learning_rate": hp.get("learning_rate"),
        "tune_metric": best.get("metric"),
        "tune_best_value": best.get("value"),
        "tune_trial": best.get("trial"),
        "seconds": round(seconds, 1),
        "error": failure(root),
    }
    accuracy = {
        "final": metrics["accuracy"],
        "frozen_features": metrics["frozen_features"]["accuracy"],
        "scratch": metrics["scratch"]["accuracy"],
    }
    training = {"final": fine, "scratch": scratch_report}
    rows = []
    for regime in REGIMES:
        report = training.get(regime, {})
        rows.append(
            {
                **common,
                "regime": regime,
                "accuracy": accuracy[regime],
                "best_epoch": report.get("best_epoch"),
                "best_val_accuracy": report.get("best_val_accuracy"),
                "best_val_loss": report.get("best_val_loss"),
            }
        )
    return rows


def collect_kept(seed: int, args: argparse.Namespace, work: Path) -> list[dict]:
    """`--collect`: the rows of a project a previous run kept (seconds: its record, else params.yaml to run.log)."""
    root = work / f"{args.variant}-seed{seed}"
    record = root / "seconds.txt"
    seconds = (
        float(record.read_text())
        if record.exists()
        else (root / "run.log").stat().st_mtime - (root / "params.yaml").stat().st_mtime
    )
    return collect(root, seed, args.variant, seconds)


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> list[dict]:
    """One whole pipeline for one seed, in a child process; its rows."""
    if args.collect:
        return collect_kept(seed, args, work)
    root = work / f"{args.variant}-seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    source = args.upstream / f"{args.upstream_variant}-seed{seed}" if args.upstream else None
    project(root, seed, args.set, source / "params.yaml" if source else None)
    only_late = False
    if source:
        for part in UPSTREAM:
            if (source / part).is_dir():
                shutil.copytree(source / part, root / part)
        only_late = True
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_DISABLE": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "benchmarks.regimes", "child", str(root)]
    cmd += ["--pin", args.pin] if args.pin else []
    cmd += ["--only-late"] if only_late else []
    start = time.perf_counter()
    with open(root / "run.log", "w", encoding="utf-8") as log:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    (root / "seconds.txt").write_text(f"{seconds:.1f}\n", encoding="utf-8")
    if code:
        tail = (root / "run.log").read_text(encoding="utf-8")[-3000:]
        if not (root / f"reports/evaluate/{EvalMetrics.FILE}").exists():
            raise SystemExit(f"seed {seed} ({args.variant}) failed ({code}); log {root / 'run.log'}:\n{tail}")
        print(
            f"seed {seed} ({args.variant}): a step after evaluate failed ({code}); rows kept with `error`:\n"
            f"{tail[-600:]}",
            flush=True,
        )
    rows = collect(root, seed, args.variant, seconds)
    print(
        json.dumps(
            {r["regime"]: r["accuracy"] for r in rows}
            | {"seed": seed, "variant": args.variant, "seconds": round(seconds)}
        ),
        flush=True,
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: run the seeds of one variant, merge its rows into the JSON, rewrite the .md."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        c = argparse.ArgumentParser(prog="python -m benchmarks.regimes child")
        c.add_argument("root", type=Path)
        c.add_argument("--pin")
        c.add_argument("--only-late", action="store_true")
        a = c.parse_args(argv[1:])
        return child(a.root, a.pin, a.only_late)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.regimes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--variant", default="default", help="name of this set of overrides in the JSON")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override (repeatable)")
    p.add_argument("--pin", help="skip tune: fine_tune trains with these hyperparameters (k=v,k=v)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at the same time (each its own process)")
    p.add_argument("--work", type=Path, help="keep the projects here (default: a temporary folder, removed)")
    p.add_argument("--upstream", type=Path, help="a kept --work: reuse each seed's steps up to train_head")
    p.add_argument("--upstream-variant", default="default", help="the variant whose projects --upstream holds")
    p.add_argument("--collect", action="store_true", help="run nothing: read the projects kept in --work")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/regimes.json")
    args = p.parse_args(argv)
    if args.collect and not args.work:
        raise SystemExit("--collect needs --work (the folder of kept projects)")
    if args.upstream and any(s.split(".")[0] not in LATE for s in args.set):
        raise SystemExit("--upstream: an override changes a step before tune; run the whole pipeline instead")
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.machine import commit, machine_facts

    start = time.perf_counter()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="tlpipe-regimes-")
    work = args.work if tmp is None else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = [r for rs in pool.map(lambda s: run_seed(s, args, work), args.seeds) for r in rs]
    finally:
        if tmp:
            tmp.cleanup()
    seconds = round(time.perf_counter() - start, 1)
    result = read_json(args.out) or {"rows": [], "variants": {}}
    earlier = result["variants"].get(args.variant, {})
    if earlier and (earlier["overrides"], earlier.get("pin")) != (args.set, args.pin):
        earlier = {}  # the same name with other overrides: its old rows are dropped
    result["rows"] = [
        r for r in result["rows"] if r["variant"] != args.variant or (earlier and r["seed"] not in args.seeds)
    ] + rows
    mine = [r for r in result["rows"] if r["variant"] == args.variant]
    seeds = sorted({r["seed"] for r in mine})
    goal = met(mine)
    result["variants"][args.variant] = {
        "overrides": args.set,
        "pin": args.pin,
        "seeds": seeds,
        "based_on": args.upstream_variant if args.upstream else "params.yaml",
        "commit": commit(),
        "met": [goal[s] for s in seeds],
        "seconds": round(sum(r["seconds"] for r in mine if r["regime"] == "final"), 1),  # each seed's pipeline
        "last_wall_seconds": seconds,
        "jobs": args.jobs,
        "load_average_after": os.getloadavg()[0],
    }
    result["goal"] = "final >= max(frozen, scratch) - 1/N_test"
    default = result["variants"].get("default", result["variants"][args.variant])
    result["met"], result["seconds"] = default["met"], default["seconds"]
    result["machine"] = machine_facts()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_md(result, args.out.with_suffix(".md"))
    print(f"regimes: {args.variant}: goal met {result['variants'][args.variant]['met']} in {seconds} s -> {args.out}")


if __name__ == "__main__":
    main()
