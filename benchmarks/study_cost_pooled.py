"""The study_cost accuracy half pooled over runs: can 3 seeds show "within 1 test image on average" at all?

    python -m benchmarks.study_cost_pooled benchmarks/results/study_cost_large.json \
        benchmarks/results/study_cost_16.json --out benchmarks/results/study_cost_pooled.json

Takes the (size, seed) pairs of study_cost result files run in TPE mode (not --replay) on the same data (the
same --set overrides) and on different seeds, and gives the final model's test-image difference (tlpipe - naive)
per pair, its mean, spread, a 95 % t interval, the Wilcoxon signed-rank p (scipy), and how many pairs a
+-1-image interval would need at that spread; beside it the median study ratio. Each file keeps its own code
commit; the report lists them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks.machine import commit, write_report


def pairs(files: list[Path]) -> tuple[list[dict], list[str], dict[str, str]]:
    """Every (size, seed) pair of the files (its ratio and test-image difference), their shared data overrides,
    and each file's code commit."""
    rows, data, commits, seen = [], None, {}, {}
    for path in files:
        result = json.loads(path.read_text(encoding="utf-8"))
        params = result["parameters"]
        if params.get("replay"):
            raise SystemExit(f"{path}: a --replay run (the naive points, not TPE's own search); leave it out")
        overrides = sorted(o for o in params["overrides"] if o.startswith(("make_digits.", "make_subset.")))
        if data is not None and overrides != data:
            raise SystemExit(
                f"{path}: data overrides {overrides} differ from the first file's {data}; pool runs on one data set"
            )
        data, commits[path.name] = overrides, result["commit"]
        for r in result["rows"]:
            other = seen.setdefault((r["image_size"], r["seed"]), path.name)
            if other != path.name:
                raise SystemExit(
                    f"{path}: {r['image_size']} px seed {r['seed']} is also in {other}; one seed's studies start from "
                    "the same sampled trials, so they are not independent pairs: pool files with different seeds"
                )
            diff = round((r["tlpipe_test"] - r["naive_test"]) * r["test_images"])
            pair = {"file": path.name, "trials": params["trials"]}
            pair.update({k: r[k] for k in ("image_size", "seed", "ratio")}, test_images_diff=diff)
            rows.append(pair)
    return rows, data or [], commits


def summary(diffs: list[int], ratios: list[float]) -> dict:
    """Mean, sd, 95 % t interval and Wilcoxon p of the differences; pairs for a +-1-image interval; median ratio."""
    from scipy import stats

    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    interval = stats.ttest_1samp(diffs, 0).confidence_interval() if len(diffs) > 1 and sd > 0 else None
    nonzero = [d for d in diffs if d]
    return {
        "pairs": len(diffs),
        "mean": round(statistics.fmean(diffs), 2),
        "sd": round(sd, 1),
        "ci95": [round(float(interval.low), 1), round(float(interval.high), 1)] if interval is not None else None,
        "wilcoxon_p": round(float(stats.wilcoxon(nonzero).pvalue), 3) if len(nonzero) > 1 else None,
        # n with 1.96 * sd / sqrt(n) <= 1 image: the pairs a "within 1 test image on average" verdict would need
        "pairs_for_1_image": math.ceil((1.96 * sd) ** 2),
        "median_ratio": round(statistics.median(ratios), 3),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Study cost pooled: final test images, tlpipe - naive (TPE mode)",
        "",
        f"Data overrides {result['data']}; files (code each ran at) {result['files']}; pooled at {result['commit']}.",
        "",
        "| px | pairs | median ratio | mean | sd | 95% interval | Wilcoxon p | pairs a +-1-image interval needs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, s in result["summary"].items():
        lines.append(f"| {key} | {s['pairs']} | {s['median_ratio']} | {s['mean']:+.1f} | {s['sd']} | {s['ci95']} | "
                     f"{s['wilcoxon_p']} | {s['pairs_for_1_image']} |")  # fmt: skip
    lines += ["", "| file | commit | trials | px | seed | ratio | test images tlpipe - naive |", "|---" * 7 + "|"]
    lines += [f"| {r['file']} | {result['files'][r['file']]} | {r['trials']} | {r['image_size']} | {r['seed']} | "
              f"{r['ratio']} | {r['test_images_diff']:+d} |" for r in result["pairs"]]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", help="study_cost result JSON files (TPE mode, the same data)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    rows, data, commits = pairs(args.files)
    sizes = sorted({r["image_size"] for r in rows})
    groups = {f"{size} px": [r for r in rows if r["image_size"] == size] for size in sizes}
    groups["all"] = rows
    result = {
        "commit": commit(),
        "files": commits,
        "data": data,
        "pairs": rows,
        "summary": {k: summary([r["test_images_diff"] for r in g], [r["ratio"] for r in g]) for k, g in groups.items()},
    }
    write_report(args.out, result, markdown)
    return result


if __name__ == "__main__":
    main()
