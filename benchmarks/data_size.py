"""The grid: images per class x similarity to the source x seeds, three arms on the same test images.

Each cell is the whole declared pipeline (`benchmarks.regimes.child`, as `dvc repro` runs it) in its own project
folder and child process, with `make_subset.train_per_class` = the cell's size and `make_subset.seed` = the seed
(so each seed draws another subset, other test images too). Arms, all scored on that cell's test images:
- final: the product's model (the whole pipeline; evaluate's `accuracy`), with `vs_best_baseline` from evaluate;
- frozen: frozen backbone features + head (train_head; evaluate's `frozen_features`);
- scratch: the same architecture from new weights with its own learning-rate search and the same budget: the late
  steps rerun on a copy of the cell's upstream outputs with `tune.regimes: [scratch]` (that project's final model).
  `--quick` uses the pipeline's own train_scratch baseline (fixed learning rate) instead, and says so per row.

Similarity. near: the embedded default, digits 0-4 (source, the backbone's pretraining) -> 5-9 (target).
far: the same target digits 5-9, made offline as inverted edge maps (Sobel magnitude of the stroke, dark outline
on a white ground). The backbone never saw that look (its filters learned bright filled strokes on black), while
the classes stay learnable from scratch. Chosen because no other labelled image set ships with scikit-learn (no
download is possible here), and because keeping the labels fixed isolates the look as the one thing that differs.
seen: the source saw the target's classes on other images (digits 0-9 -> 5-9, make_digits splits each shared
class: a third of its images to the source, the rest to the target), as ImageNet holds cats and dogs for the
seeds' cats-vs-dogs task. Every cell sets the classes itself, so params.yaml's default does not move the rows.

    python -m benchmarks.data_size --quick                       # sizes 5 and 25, near and far, seed 42
    python -m benchmarks.data_size --sizes 5 10 25 50 100 --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.data_size_far import write_far
from benchmarks.data_size_report import markdown, plot, significantly_worse, summarize  # noqa: F401
from benchmarks.machine import commit, machine
from benchmarks.regimes import UPSTREAM, project, read_json
from tlpipe.config import parse_assignments, with_overrides
from tlpipe.contracts import EvalMetrics

REPO = Path(__file__).resolve().parents[1]
SIMILARITIES = ("near", "far", "seen")
SOURCE = {"near": list(range(5)), "far": list(range(5)), "seen": list(range(10))}  # make_digits.source_classes
FIELDS = (
    "train_per_class",
    "similarity",
    "seed",
    "final",
    "frozen",
    "scratch",
    "test_images",
    "regime",
    "freeze_ratio",
)


# The child runs the declared steps in order (as `dvc repro` would), minus the skipped ones; register is skipped
# everywhere (the grid reads evaluate's metrics), and the scratch arm reuses the cell's upstream and train_scratch.
CHILD = (
    "import sys; from pathlib import Path; from pipelines.graph import build; from pipelines.local import "
    "run_steps; from tlpipe.config import load_params; root = Path(sys.argv[1]); run_steps(root, [s.name for s "
    "in build(load_params(root / 'params.yaml')) if s.name not in sys.argv[2:]])"
)
SCRATCH_ARM = ("tune", "fine_tune", "evaluate")
COPIED = (*UPSTREAM, "models/scratch", "reports/train_scratch")


def run(root: Path, only: tuple[str, ...] = (), register: bool = False) -> float:
    """The pipeline in `root` in a child process (all steps, but register unless asked, or `only` these); seconds."""
    from pipelines.graph import build
    from tlpipe.config import load_params

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GX_ANALYTICS_ENABLED": "false",
        "TQDM_DISABLE": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    names = [s.name for s in build(load_params(root / "params.yaml"))]
    skip = [n for n in names if (n == "register" and not register) or (only and n not in only)]
    start = time.perf_counter()
    with open(root / "run.log", "w", encoding="utf-8") as log:
        code = subprocess.run(
            [sys.executable, "-c", CHILD, str(root), *skip], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    if code or not (root / f"reports/evaluate/{EvalMetrics.FILE}").exists():
        tail = (root / "run.log").read_text(encoding="utf-8")[-2000:]
        raise SystemExit(f"{root.name} failed ({code}); log {root / 'run.log'}:\n{tail}")
    return time.perf_counter() - start


def test_per_class(size: int, overrides: list[str], base: Path) -> list[str]:
    """make_subset.test_per_class that fits next to `size` training images (unless the overrides set it).

    The target digits have 174-182 images a class (116-121 when the source shares the class: make_digits), so the
    committed test images a class may not fit next to a cell's training images; larger cells test on what is
    left (rows carry `test_images`), so every size runs unchanged.
    """
    from sklearn.datasets import load_digits

    from components.make_digits import digit_indices
    from tlpipe.sections import MakeDigitsConfig

    if any(item.startswith("make_subset.test_per_class=") for item in overrides):
        return []
    params = with_overrides(yaml.safe_load(base.read_text(encoding="utf-8")), parse_assignments(overrides, "--set"))
    target = digit_indices(load_digits().target, MakeDigitsConfig(**params["make_digits"]))["target"]
    fewest = min(len(pick) for pick in target.values())
    room = fewest - size - int(params["make_subset"]["val_per_class"])
    wanted = int(params["make_subset"]["test_per_class"])
    return [] if room >= wanted else [f"make_subset.test_per_class={max(room, 1)}"]


def cell(work: Path, size: int, similarity: str, seed: int, args: argparse.Namespace) -> dict:
    """One grid cell: the pipeline, then (unless --quick) the scratch arm with its own search; one row."""
    base = [f"make_subset.train_per_class={size}", f"make_subset.seed={seed}"]
    base += [f"make_digits.source_classes={SOURCE[similarity]}", "make_digits.target_classes=[5, 6, 7, 8, 9]"]
    base += args.set
    base += test_per_class(size, base, args.base)
    if similarity == "far":
        base.append(f"data.source={write_far(work / 'far-target', args.image_size, [5, 6, 7, 8, 9])}")
    root = work / f"{similarity}-n{size}-seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    project(root, seed, base, args.base)
    seconds = run(root)
    metrics = read_json(root / f"reports/evaluate/{EvalMetrics.FILE}")
    hp = read_json(root / "models/fine_tune/run.json").get("hyperparameters", {})
    row = {
        "train_per_class": size,
        "similarity": similarity,
        "seed": seed,
        "final": metrics["accuracy"],
        "frozen": metrics["frozen_features"]["accuracy"],
        "scratch": metrics["scratch"]["accuracy"],
        "test_images": metrics["test_images"],
        "regime": metrics["regime"],
        "freeze_ratio": hp.get("freeze_ratio"),
        "label": read_json(root / "reports/tune/best_params.json").get("label", ""),
        "vs_best_baseline": metrics.get("vs_best_baseline", {}),
        "scratch_arm": "train_scratch (fixed lr)",
        "scratch_fixed_lr": metrics["scratch"]["accuracy"],
        "seconds": round(seconds, 1),
    }
    if not args.quick:
        tuned = work / f"{root.name}-scratch"
        shutil.rmtree(tuned, ignore_errors=True)
        project(tuned, seed, [*base, "tune.regimes=[scratch]"], args.base)
        for part in COPIED:
            if (root / part).is_dir():
                shutil.copytree(root / part, tuned / part)
        row["seconds"] = round(row["seconds"] + run(tuned, only=SCRATCH_ARM), 1)
        scratch = read_json(tuned / f"reports/evaluate/{EvalMetrics.FILE}")
        vs = paired(root, root / "models/fine_tune", tuned / "models/fine_tune", "tuned_scratch")
        row.update(
            scratch=scratch["accuracy"],
            scratch_arm="tuned scratch (tune.regimes: [scratch])",
            scratch_regime=scratch["regime"],
            vs_tuned_scratch=vs,
        )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work / f"{root.name}-scratch", ignore_errors=True)
    print(json.dumps({k: row[k] for k in FIELDS}), flush=True)
    return row


def paired(root: Path, model: Path, baseline: Path, name: str) -> dict:
    """Exact McNemar of two trained models (their `models/...` folders) on the test images of project `root`."""
    import keras

    from tlpipe.contracts import MODEL_FILE
    from tlpipe.data.datasets import load_split
    from tlpipe.reports.selection import versus

    size = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))["model"]["image_size"]
    images, labels, _ = load_split(root / "data/subset", "test", size)
    preds = [
        np.asarray(
            keras.saving.load_model(folder / MODEL_FILE, safe_mode=True).predict(images.astype("float32"), verbose=0)
        ).argmax(axis=1)
        for folder in (model, baseline)
    ]
    vs = versus(name, labels, *preds)
    return {k: vs[k] for k in ("name", "delta", "mcnemar_p", "fixed", "broken")}


def report(result: dict, out: Path) -> None:
    """Rewrite the summary, the markdown table and the plot from the rows (also `--report`: no cell runs)."""
    result["summary"] = summarize(result["rows"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    plot(result["summary"], out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> dict:
    """CLI: run the cells, merge them into data_size.json (a rerun cell replaces its row), write .md and .png.

    Each finished cell is written at once, so a partial run leaves valid rows; `--resume` skips the cells the
    file already holds. Seeds are the outer loop: every size and similarity at one seed before the next seed.
    """
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.data_size", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    p.add_argument("--similarities", nargs="+", choices=SIMILARITIES, default=list(SIMILARITIES))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--quick", action="store_true", help="sizes 5 25, seed 42, scratch arm = train_scratch")
    p.add_argument("--image-size", type=int, default=32, help="px of the far target (match model.image_size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override (repeatable)")
    p.add_argument("--work", type=Path, default=Path("/tmp/tlpipe-data-size"))
    p.add_argument("--keep", action="store_true", help="keep each cell's project folder")
    p.add_argument("--resume", action="store_true", help="skip cells already in --out")
    p.add_argument("--why", default="", help="why these overrides (what was cut to fit the time), kept in the JSON")
    p.add_argument("--report", action="store_true", help="only rewrite the .md and .png from --out")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="with --report: add these files' rows (a grid split over processes); a cell in both keeps --out's row",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/data_size.json")
    args = p.parse_args(argv)
    result = read_json(args.out) or {"rows": []}
    if args.report:
        have = {(r["train_per_class"], r["similarity"], r["seed"]) for r in result["rows"]}
        for other in map(read_json, args.merge):
            result["rows"] += [
                r for r in other.get("rows", []) if (r["train_per_class"], r["similarity"], r["seed"]) not in have
            ]
            for key in ("note", "settings"):
                result.setdefault(key, other.get(key))
        report(result, args.out)
        return result
    if args.quick:
        args.sizes, args.seeds = [5, 25], [42]
    args.work.mkdir(parents=True, exist_ok=True)
    # params.yaml as it is now: the working tree may change while a long grid runs
    args.base = args.work / "params.base.yaml"
    shutil.copyfile(REPO / "params.yaml", args.base)
    result["settings"] = {
        "overrides": args.set,
        "quick": args.quick,
        "commit": commit(),
        "machine": machine(),
        "why": args.why,
    }
    result["note"] = (
        f"Goal per cell: mean final >= max(mean frozen, mean scratch) - 1 test image, and no seed "
        f"significantly worse than its best baseline (McNemar p < 0.05). Overrides of params.yaml: "
        f"{' '.join(args.set) or 'none'}; quick: {args.quick}; code at {result['settings']['commit']}."
    )
    done = {(r["train_per_class"], r["similarity"], r["seed"]) for r in result["rows"]} if args.resume else set()
    for seed in args.seeds:
        for size in args.sizes:
            for similarity in args.similarities:
                key = (size, similarity, seed)
                if key in done:
                    continue
                row = cell(args.work, size, similarity, seed, args)
                result["rows"] = [
                    r for r in result["rows"] if (r["train_per_class"], r["similarity"], r["seed"]) != key
                ] + [row]
                report(result, args.out)
    return result


if __name__ == "__main__":
    main()
