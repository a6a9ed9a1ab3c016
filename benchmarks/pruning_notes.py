"""The pruning benchmark's notes, its rewritten markdown and its report from the measured rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from benchmarks.pruning_report import EPOCHS_GOAL, WALL_GOAL, decide, judge, markdown, why
from benchmarks.study_cost import REPO, _load, machine, overrides

DESCRIBE = {
    "none": "NopPruner (the reference)",
    "median": "the default, MedianPruner(n_startup_trials=2, n_warmup_steps=1)",
    "median_w2": "MedianPruner(2, n_warmup_steps=2)",
    "median_s4_w1": "MedianPruner(n_startup_trials=4, n_warmup_steps=1)",
    "patient_median": "PatientPruner(MedianPruner(2, 1), patience=1)",
    "wilcoxon": "WilcoxonPruner(p_threshold=0.1, n_startup_steps=2), epochs as its steps",
    "sha_r2": "SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)",
    "hyperband": "HyperbandPruner(min_resource=1, max_resource=tune.epochs)",
    "percentile_33": "PercentilePruner(33, n_startup_trials=2, n_warmup_steps=1): keep only the best third",
    "percentile_25": "PercentilePruner(25, n_startup_trials=2, n_warmup_steps=1): keep only the best quarter",
}


def notes(result: dict, planned: list[int]) -> list[str]:
    """The notes of the report, computed from the rows and the studies' trials."""
    rows, studies = result["rows"], {int(s): v for s, v in result["studies"].items()}
    seeds = sorted(studies)
    names = [n for n in dict.fromkeys(r["pruner"] for r in rows) if n != "none"]
    tune = yaml.safe_load((REPO / "params.yaml").read_text())["tune"]
    tune.update(
        {
            k.partition(".")[2]: v
            for k, v in overrides(result["parameters"].get("overrides", [])).items()
            if k.startswith("tune.")
        }
    )
    out = []
    missing = [s for s in planned if s not in studies]
    out.append(
        f"Seeds run: {', '.join(map(str, seeds))}"
        + (f"; not run (time budget): {', '.join(map(str, missing))}" if missing else " (all planned)")
        + ". Each study: "
        f"{result['parameters']['n_trials']} trials, cap {tune['epochs']} epochs with early stopping "
        f"(patience {tune['patience']}) on {tune['metric']}, regimes {' + '.join(tune['regimes'])}, "
        f"train_bn searched: {tune['search_bn']} ("
        + (
            f"the committed params with {', '.join(given)}"
            if (given := result["parameters"].get("overrides"))
            else "the committed params"
        )
        + "); the project (data, backbone, head) "
        "is built once with seed 42, the seed varies the sampler, the trials and the final fine-tune. "
        "Pruned trials count with the epochs they ran (epochs_run)."
    )
    out.append("Candidates: " + "; ".join(f"{n} = {DESCRIBE.get(n, n)}" for n in names) + ".")
    for n in names:
        mine = [r for r in rows if r["pruner"] == n]
        ok = [r["seed"] for r in mine if r["ok"]]
        ratios = " / ".join(f"{r['epochs_ratio']:.2f}" for r in mine)
        same = sum(r["params"] == studies[r["seed"]]["none"]["params"] for r in mine)
        walls = " / ".join(f"{r['wall_ratio']:.2f}" for r in mine)
        judged = [r for r in mine if not r["same_params"]]
        out.append(
            f"{n}: goal met on {len(ok)}/{len(mine)} seeds ({', '.join(map(str, ok)) or 'none'}); epochs "
            f"ratio {ratios} (mean {sum(r['epochs_ratio'] for r in mine) / len(mine):.3f}); wall-time ratio "
            f"{walls} (goal <= {WALL_GOAL}: {sum(r['wall_ok'] for r in mine)}/{len(mine)} seeds); same best "
            f"params as the unpruned study on {same}/{len(mine)} seeds (no evidence either way there); test "
            f"images short on the {len(judged)} seeds that chose other params: "
            + (" / ".join(f"{r['test_short_images']:.0f}" for r in judged) or "none to judge")
            + "."
        )
        for r in mine:
            if not r["ok"]:
                out.append(f"{n} misses seed {r['seed']}: {why(studies[r['seed']], n, r, tune['epochs'])}.")
    ref = [r for r in rows if r["pruner"] == "none"]
    n_test = next(iter(studies.values()))["none"]["final"]["test_images"]
    out.append(
        "Unpruned reference per seed: "
        + ", ".join(f"seed {r['seed']} {r['epochs']} epochs, test {r['test']:.3f}" for r in ref)
        + f" ({n_test} test images; one image = {1 / n_test:.3f})."
    )
    per_seed = result["load"].get("per_seed", {})
    out.append(
        f"Load (1/5/15 min) at start {result['load']['start']}, before each seed "
        + ", ".join(f"{s}: {v}" for s, v in per_seed.items())
        + f", at end {result['load']['end']} on "
        f"{result['machine']['cores']} cores. The judged quantities "
        "(epochs, test accuracy) do not depend on load, the seconds do. The tune step runs with TF op "
        "determinism off, so the same point can score differently in two studies and a rerun can differ "
        "by a trial."
    )
    return out


def rewrite(out: Path, planned: list[int] | None = None) -> dict:
    """Recompute rows, decision and notes of a written report from its studies; rewrite the .json and .md."""
    result = json.loads(out.read_text(encoding="utf-8"))
    results = {int(s): v for s, v in result["studies"].items()}
    result["rows"] = judge(results)
    result["met"], result["decision"] = decide(result["rows"], result["parameters"]["pruners"], len(results))
    seeds: list[int] = planned or result["parameters"].get("planned_seeds") or sorted(results)
    result["notes"] = notes(result, seeds) + result.get("extra_notes", [])
    out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    return result


def report(args, results: dict, loads: dict, load_start: list, work: Path, started: float) -> dict:
    """Judge the seeds run so far; write pruning.json and .md."""
    rows = judge(results)
    met, decision = decide(rows, args.pruners, len(results))
    result = {
        "rows": rows,
        "machine": machine(),
        "load": {"start": load_start, "end": _load(), "per_seed": loads},
        "parameters": {
            "seeds": sorted(results),
            "planned_seeds": args.seeds,
            "pruners": args.pruners,
            "overrides": args.set,
            "n_trials": args.trials or yaml.safe_load((REPO / "params.yaml").read_text())["tune"]["n_trials"],
        },
        "goal": {"epochs_ratio_le": EPOCHS_GOAL, "test_within_images": 1},
        "met": met,
        "decision": decision,
        "studies": {str(s): v for s, v in results.items()},
        "work": str(work),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["notes"] = notes(result, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {args.out} ({result['wall_s']:.0f} s, seeds {sorted(results)}): {decision}", flush=True)
    return result
