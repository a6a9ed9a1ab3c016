"""Where a study's time goes: the study_cost benchmark's two arms under cProfile, split into phases.

    python -m benchmarks.study_cost --sizes 96 160 --seeds 45 --trials 16 --no-final --work W --set ...
    python -m benchmarks.study_cost_profile --work W --sizes 96 160 --seed 45 --trials 16 --set ...

Each arm runs as the same child the benchmark starts (`python -m benchmarks.study_cost tlpipe|naive ...`), here
under `python -m cProfile`, on the project the benchmark kept in W (built first when W has none); tlpipe's tune
starts from a cold activation cache and a fresh study, as in the benchmark. The phases are pstats' cumulative
seconds of named functions (outermost calls only, so a recursive function counts once). cProfile sees the main
thread only: tf.data's and Keras's reader threads (decoding, the naive arm's ImageDataGenerator) are not phases
of their own; the main thread's wait for them is inside "Keras fit". cProfile adds a few percent, so read the
shares, not the seconds, against the benchmark's own timings.
"""

from __future__ import annotations

import argparse
import json
import pstats
from pathlib import Path

from benchmarks.machine import commit, write_report
from benchmarks.study_cost import build_project, run_child
from benchmarks.study_cost_arms import REPO

# (phase, alternatives): an alternative is a list of (file path suffix, function name) whose seconds add up; the
# first alternative found in the profile counts (the tune step, else the naive arm's own optimize call); indented
# phases are parts of the phase above them
MLFLOW = ("start_run", "end_run", "log_params", "log_metrics", "log_metric", "set_tag")
OPTUNA = ("report", "set_user_attr", "should_prune")
BUILD = [[("tlpipe/tuning/trial.py", "build_trial")], [("study_cost_naive.py", "naive_model")]]
CACHE = [("tlpipe/tuning/cache.py", "get"), ("tlpipe/tuning/trial.py", "_fill_boundaries")]  # loads; one-pass fills
PHASES = [
    ("whole study", [[("pipelines/local.py", "run_steps")], [("optuna/study/study.py", "optimize")]]),
    ("trials (objective)", [[("tlpipe/tuning/worker.py", "objective")], [("optuna/study/_optimize.py", "_run_trial")]]),
    ("Keras fit: train and validation steps", [[("keras/src/backend/tensorflow/trainer.py", "fit")]]),
    ("  of which validation (evaluate)", [[("keras/src/backend/tensorflow/trainer.py", "evaluate")]]),
    ("building a trial's model", BUILD),
    ("  of which the activation cache", [CACHE]),
    ("loading the backbone", [[("tlpipe/models/backbones.py", "load_backbone")]]),
    ("tf.function tracing (inside the above)", [[("polymorphic_function/tracing_compilation.py", "trace_function")]]),
    ("MLflow runs and metrics", [[("mlflow/tracking/fluent.py", name) for name in MLFLOW]]),
    ("Optuna reports and attributes", [[("optuna/trial/_trial.py", name) for name in OPTUNA]]),
    ("gc after each trial", [[("~", "<built-in method gc.collect>")]]),
    ("plots and summary", [[("tlpipe/tuning/worker.py", "summarize")]]),
]  # fmt: skip


def phases(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per phase: the first alternative of PHASES found, its functions' outermost calls summed."""
    table = stats.stats  # type: ignore[attr-defined]  # (file, line, name) -> (cc, nc, tt, ct, callers)

    def seconds(functions) -> float:
        return sum(
            ct
            for (path, _, name), (_, _, _, ct, _) in table.items()
            if any(path.endswith(suffix) and name == fn for suffix, fn in functions)
        )

    out = {}
    for label, alternatives in PHASES:
        found = [s for s in map(seconds, alternatives) if s > 0]
        out[label] = round(found[0], 2) if found else 0.0
    return out


def profile_arm(work: Path, size: int, seed: int, trials: int, arm: str, extra: list[str]) -> dict:
    """One arm's study under cProfile: its run facts (states, epochs) and the phases."""
    folder = work / "profile" / f"px{size}-seed{seed}-{arm}"
    folder.mkdir(parents=True, exist_ok=True)
    prof, run = folder / "study.prof", folder / "run.json"
    args = ["--root", str(work / f"px{size}"), "--size", str(size), "--trials", str(trials), "--seed", str(seed)]
    run_child(["-o", str(prof), "-m", "benchmarks.study_cost", arm, *args, "--run", str(run), *extra],
              work / "profile.log", module="cProfile")  # fmt: skip
    facts = json.loads(run.read_text())
    split = phases(pstats.Stats(str(prof)))
    whole = split["whole study"] or 1.0
    return {
        "image_size": size,
        "seed": seed,
        "arm": arm,
        "profiled_s": whole,
        "unprofiled_study_s": round(facts["seconds"], 1),
        "states": facts["states"],
        "epochs": facts["epochs"],
        "phases": split,
        "shares": {k: round(v / whole, 3) for k, v in split.items()},
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    head = " | ".join(f"{r['arm']} {r['image_size']} px" for r in rows)
    lines = [
        "# Where a study's time goes (cProfile, main thread)",
        "",
        f"Seed {result['seed']}, {result['trials']} trials, overrides {result['overrides']}; code at "
        f"{result['commit']}. Seconds (share of the whole study); indented rows are parts of the row above.",
        "",
        f"| phase | {head} |",
        "|---|" + "---|" * len(rows),
    ]
    for label, _ in PHASES:
        cells = [f"{r['phases'][label]:.1f} ({r['shares'][label]:.0%})" for r in rows]
        lines.append(f"| {label.replace('  ', '&nbsp;&nbsp;')} | " + " | ".join(cells) + " |")
    lines.append("| epochs run | " + " | ".join(str(r["epochs"]) for r in rows) + " |")
    lines.append("| trial states | " + " | ".join(str(r["states"]) for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="the benchmark's --work folder (projects per size)")
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 160])
    p.add_argument("--seed", type=int, default=45)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--arms", nargs="+", default=["tlpipe", "naive"], choices=("tlpipe", "naive"))
    p.add_argument("--set", action="append", default=[], help="params override section.key=value (as the benchmark)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/study_cost_profile.json")
    args = p.parse_args(argv)
    extra = [x for pair in args.set for x in ("--set", pair)]
    rows = []
    for size in args.sizes:
        build_project(args.work / f"px{size}", size, args.trials, extra, args.work / "profile.log")
        for arm in args.arms:
            rows.append(profile_arm(args.work, size, args.seed, args.trials, arm, extra))
            print(f"profiled {arm} at {size} px: {rows[-1]['profiled_s']:.1f} s", flush=True)
    result = {"commit": commit(), "seed": args.seed, "trials": args.trials, "overrides": args.set, "rows": rows}
    write_report(args.out, result, markdown)
    return result


if __name__ == "__main__":
    main()
