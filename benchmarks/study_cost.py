"""Study cost: a whole tlpipe `tune` study against the naive way, side by side, at two input sizes.

Naive arm (a competent user following the Keras and Optuna tutorials): Optuna with the same sampler, seed,
search space, trial budget and pruner (`optuna_integration.KerasPruningCallback` on the same metric), Keras
`EarlyStopping` with tlpipe's patience; every trial builds the full Keras model (the same backbone, warm head
and freeze helpers as tlpipe) and reads the image files every epoch through `tf_keras`
`ImageDataGenerator.flow_from_directory` with per-epoch augmentation (augment's settings), as the seeds do.
What it lacks is only tlpipe's machinery: the activation cache and the in-memory input pipeline.
tlpipe arm: the real `tune` step (`pipelines.local.run_steps`, as dvc.yaml runs it) with
its defaults (cache, pruning, early stopping, MLflow runs per trial) from a cold activation cache. Both
arms are restricted to the transfer regime without the train_bn choice (the naive arm cannot do scratch),
the same freeze-ratio and learning-rate ranges, and `tune.epochs` as the epoch cap. The post-study sweep
is off (it is a report, not part of the study).

Each arm runs in its own child process; per (size, seed) the two run back to back, the order alternating,
so load from other processes falls on both. Then one child per size fine-tunes the best params of every
run with the same code (`components.fine_tune.fine_tune`) and scores the test split.

    python -m benchmarks.study_cost --sizes 32 96 --seeds 42 43 44 --trials 8
    python -m benchmarks.study_cost overhead --root DIR    # per-step cost of a cached trial (Keras settings)
    --replay: tlpipe's tune evaluates the naive study's points in its order (the proxy alone, not TPE's path)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.machine import commit
from benchmarks.study_cost_arms import REPO, arm_tlpipe, overrides, write_params
from benchmarks.study_cost_naive import arm_naive
from benchmarks.study_cost_overhead import step_overhead
from benchmarks.study_cost_report import RATIO_GOAL, _load, markdown, per_size, summarize_rows

UPSTREAM = [
    "make_digits",
    "make_subset",
    "validate_data",
    "augment",
    "pretrain_backbone",
    "extract_features",
    "train_head",
]


def machine() -> dict:
    """Cores, CPU model and library versions."""
    import keras
    import optuna
    import tensorflow as tf

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "optuna": optuna.__version__,
    }


def child_env() -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_DISABLE": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_child(args: list[str], log: Path, module: str = "benchmarks.study_cost") -> None:
    """`python -m MODULE ARGS` in its own process (fresh TensorFlow state)."""
    with open(log, "a", encoding="utf-8") as out:
        code = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code:
        raise SystemExit(f"{' '.join(args)} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")


def build_project(root: Path, size: int, trials: int, extra: list[str], log: Path) -> float | None:
    """The benchmark project at `size` px in `root` (the upstream steps, in a child): its seconds, None if kept."""
    if (root / "models/head").is_dir():
        return None
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_child(["build", "--root", str(root), "--size", str(size), "--trials", str(trials), *extra], log)
    return round(time.perf_counter() - t0, 1)


def fine_tune_test(root: Path, params, hp, workdir: Path) -> dict:
    """Train the final model with `hp` by fine_tune's own code; its accuracy on the test split."""
    import numpy as np

    from components.fine_tune import fine_tune
    from tlpipe.contracts import HEAD_FILE
    from tlpipe.data.datasets import load_split
    from tlpipe.models.backbones import backbone_identity, load_backbone, preprocess_mode
    from tlpipe.models.fitting import Training

    size, spec = params.model.image_size, str(root / "models/backbone")
    t0 = time.perf_counter()
    run = Training.from_params(
        params,
        params.fine_tune,
        hp=hp,
        preprocess=preprocess_mode(spec),
        load=lambda: load_backbone(spec, "none", size),
        head_path=root / "models/head" / HEAD_FILE,
    )
    model, info = fine_tune(
        run, identity=backbone_identity(spec, "none", size), subset=root / "data/subset", workdir=workdir
    )
    x, y, _ = load_split(root / "data/subset", "test", size)
    pred = np.argmax(model.predict(x, verbose=0), axis=1)
    shutil.rmtree(info["job_dir"], ignore_errors=True)
    return {
        "test_accuracy": float(np.mean(pred == y)),
        "test_images": len(y),
        "fine_tune_best_epoch": info["best_epoch"],
        "fine_tune_s": round(time.perf_counter() - t0, 1),
    }


def final_tests(root: Path, size: int, trials: int, runs: list[Path], extra: dict) -> None:
    """Fine-tune every run's best params (same code for both arms); test accuracy into each run's json."""
    from tlpipe.config import load_params
    from tlpipe.contracts import HyperParams

    done: dict[str, dict] = {}
    for path in runs:
        run = json.loads(path.read_text())
        params = load_params(
            write_params(root, run["seed"], size, trials, storage=path.parent / "final.db", overrides=extra)
        )
        hp = HyperParams(**run["best_params"])
        key = json.dumps([run["seed"], hp.model_dump()], sort_keys=True)
        if key not in done:
            done[key] = fine_tune_test(root, params, hp, path.parent / "fine_tune_work")
        run.update(done[key])
        path.write_text(json.dumps(run, indent=1))


def merge_earlier(out: Path, runs: dict) -> list[str]:
    """`--merge`: the earlier result's runs of (size, seed) pairs this run did not redo join `runs`; their keys.

    Each kept run is what that earlier run wrote (its seconds, load and test accuracy), so a later run can add
    seeds or sizes without redoing the ones already measured.
    """
    earlier = json.loads(out.read_text(encoding="utf-8")).get("runs", {}) if out.is_file() else {}
    redone = {(size, seed) for size, seed, _ in runs}
    kept = []
    for key, run in earlier.items():
        if (run["size"], run["seed"]) not in redone:
            runs[(run["size"], run["seed"], run["arm"])] = run
            kept.append(key)
    return kept


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "command", nargs="?", default="bench", choices=("bench", "build", "naive", "tlpipe", "final", "overhead")
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--seeds-per-size", type=int, nargs="+", help="how many of --seeds each size runs (e.g. 3 1)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--work", type=Path, help="keep the projects here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/study_cost.json")
    p.add_argument("--merge", action="store_true", help="keep the earlier --out file's runs of other size/seeds")
    p.add_argument("--no-final", action="store_true", help="skip the final fine-tunes")
    p.add_argument("--replay", action="store_true", help="tlpipe's tune evaluates the naive study's points")
    p.add_argument("--set", action="append", default=[], help="params override section.key=value (smoke tests)")
    p.add_argument("--repeats", type=int, default=3, help="overhead: interleaved repeats")
    p.add_argument("--epochs", type=int, default=5, help="overhead: epochs per trial")
    # child arguments
    p.add_argument("--root", type=Path)
    p.add_argument("--size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--run", type=Path, nargs="*")
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> dict:
    import tempfile

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="tlpipe-study-cost-"))
    load_start = _load()
    extra = [x for pair in args.set for x in ("--set", pair)]
    runs: dict[tuple[int, int, str], dict] = {}
    build_s = {}
    for size in args.sizes:
        root = work / f"px{size}"
        if (seconds := build_project(root, size, args.trials, extra, work / "log.txt")) is not None:
            build_s[size] = seconds
        count = (args.seeds_per_size or [len(args.seeds)] * len(args.sizes))[args.sizes.index(size)]
        seeds = args.seeds[:count]
        for i, seed in enumerate(seeds):
            alternate = (i + args.sizes.index(size)) % 2 == 0
            order = ("naive", "tlpipe") if alternate or args.replay else ("tlpipe", "naive")
            load = _load()
            for arm in order:
                out = work / "runs" / f"px{size}-seed{seed}-{arm}" / "run.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                common = ["--root", str(root), "--size", str(size), "--trials", str(args.trials)]
                naive_run = out.parent.parent / f"px{size}-seed{seed}-naive" / "run.json"
                files = [out, naive_run] if args.replay and arm == "tlpipe" else [out]
                run_child([arm, *common, "--seed", str(seed), "--run", *map(str, files), *extra], work / "log.txt")
                run = json.loads(out.read_text())
                run.update(order=list(order), load_before=load)
                out.write_text(json.dumps(run, indent=1))
                runs[(size, seed, arm)] = run
                print(
                    f"px {size} seed {seed} {arm}: {run['seconds']:.1f} s, best {run['best']:.4f}, "
                    f"{run['states']}, load {_load()}",
                    flush=True,
                )
        if not args.no_final:
            files = [work / "runs" / f"px{size}-seed{s}-{a}" / "run.json" for s in seeds for a in ("naive", "tlpipe")]
            common = ["--root", str(root), "--size", str(size), "--trials", str(args.trials)]
            run_child(["final", *common, "--run", *map(str, files), *extra], work / "log.txt")
            for s in seeds:
                for a in ("naive", "tlpipe"):
                    runs[(size, s, a)] = json.loads((work / "runs" / f"px{size}-seed{s}-{a}" / "run.json").read_text())
    merged = merge_earlier(args.out, runs) if args.merge else []
    result = {
        "rows": summarize_rows(runs),
        "commit": commit(),
        "per_size": per_size(summarize_rows(runs)),
        "merged_from_earlier_file": merged,
        "machine": machine(),
        "load": {"start": load_start, "end": _load()},
        "parameters": {
            "sizes": args.sizes,
            "seeds": args.seeds,
            "seeds_per_size": args.seeds_per_size,
            "trials": args.trials,
            "epochs": yaml.safe_load((REPO / "params.yaml").read_text())["tune"]["epochs"],
            "overrides": args.set,
            "replay": args.replay,
            "build_s": build_s,
        },
        "runs": {f"px{k[0]}-seed{k[1]}-{k[2]}": v for k, v in runs.items()},
        "work": str(work),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["goal"] = {"ratio_le": RATIO_GOAL, "test_within_images": 1}
    result["pass"] = all(r["ratio_ok"] and r["test_ok"] for r in result["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {args.out} ({result['wall_s']:.0f} s): pass={result['pass']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    extra = overrides(args.set)
    if args.command == "bench":
        return bench(args)
    if args.command == "build":
        from pipelines.local import run_steps

        run_steps(args.root, UPSTREAM, write_params(args.root, 42, args.size, args.trials, overrides=extra))
    elif args.command == "naive":
        arm_naive(args.root, args.seed, args.size, args.trials, args.run[0], extra)
    elif args.command == "tlpipe":  # a second --run file: the naive run whose points it replays
        arm_tlpipe(args.root, args.seed, args.size, args.trials, args.run[0], extra, (args.run[1:] or [None])[0])
    elif args.command == "final":
        final_tests(args.root, args.size, args.trials, args.run, extra)
    elif args.command == "overhead":
        step_overhead(args.root, args.size, args.out, repeats=args.repeats, epochs=args.epochs)
    return None


if __name__ == "__main__":
    main()
