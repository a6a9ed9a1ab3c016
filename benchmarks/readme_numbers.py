"""The README's numbers: the default pipeline on the embedded digits, run at a commit, written beside that commit.

Runs `make run` in a fresh clone of HEAD (params.yaml as committed, the clone's own MLflow and Optuna stores),
exactly as a user's first run, and times it. Then writes
`benchmarks/results/readme_numbers.json` and `.md`: final accuracy with its bootstrap 95% CI, the frozen-features
and from-scratch baselines, evaluate's `vs_best_baseline` (delta, exact McNemar p), the final model against the
from-scratch baseline (exact McNemar on the same test images), the regime and freeze ratio tuning chose, the
wall time, and the commit (`git rev-parse --short HEAD`). The README
blocks between `<!-- readme-numbers:default -->` / `<!-- readme-numbers:grid... -->` markers (in README.md, or in
benchmarks/README.md for the grids' history) are rewritten from this file and from the grid files
(`benchmarks/results/data_size*.json`), so no number in them is typed by hand.

    make readme-numbers        # = python -m benchmarks.readme_numbers --adopt (dvc.lock and metrics too)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.data_size import markdown as grid_markdown
from benchmarks.data_size import paired
from benchmarks.machine import commit, machine
from benchmarks.regimes import read_json
from tlpipe.contracts import EvalMetrics, candidate_words

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results"


def numbers(root: Path, seconds: float) -> dict:
    """What the README states, read from one finished project's reports (and its two models, for McNemar)."""
    metrics = read_json(root / f"reports/evaluate/{EvalMetrics.FILE}")
    run = read_json(root / "models/fine_tune/run.json")
    hp, freeze = run.get("hyperparameters", {}), run.get("freeze", {})
    return {
        "final": metrics["accuracy"],
        "final_ci95": metrics["accuracy_ci95"],
        "frozen": metrics["frozen_features"]["accuracy"],
        "scratch": metrics["scratch"]["accuracy"],
        "vs_best_baseline": {k: metrics["vs_best_baseline"][k] for k in ("name", "delta", "mcnemar_p")},
        "vs_scratch": paired(root, root / "models/fine_tune", root / "models/scratch", "scratch"),
        "test_images": metrics["test_images"],
        "regime": metrics["regime"],
        "handed_on": metrics.get("handed_on", "fine_tune"),
        "freeze_ratio": hp.get("freeze_ratio"),
        "frozen_layers": f"{freeze.get('frozen')}/{freeze.get('total')}",
        "wall_seconds": round(seconds, 1),
    }


def run_make_run(adopt: bool) -> dict:
    """`make run` in a fresh clone of HEAD, exactly as a user runs it; the numbers from its reports.

    A clone, not this working tree: the numbers belong to a commit, and uncommitted edits are not in it. With
    `adopt`, the clone's dvc.yaml (make run regenerates it), dvc.lock and the report files git keeps (metrics,
    plot data) replace this checkout's.
    """
    code = commit().removesuffix("-dirty")  # the clone holds HEAD only
    with tempfile.TemporaryDirectory(prefix="tlpipe-readme-") as tmp:
        root = Path(tmp) / "tlpipe"
        subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TLPIPE_"))}
        log = Path(tmp) / "make-run.log"
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as out:
            code_run = subprocess.run(["make", "run"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        if code_run.returncode:
            raise SystemExit(f"make run failed in the clone ({code_run.returncode}):\n{log.read_text()[-3000:]}")
        params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
        result = {
            "commit": code,
            "when": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "command": "make run (fresh clone)",
            "numbers": numbers(root, seconds),
            "train_per_class": params["make_subset"]["train_per_class"],
        }
        if adopt:
            changed = subprocess.run(
                ["git", "ls-files", "-m", "-o", "--exclude-standard", "dvc.yaml", "dvc.lock", "reports"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            for rel in changed:
                (REPO / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / rel, REPO / rel)
            print(f"adopted from the run: {', '.join(changed)}")
    return result


def table(result: dict) -> str:
    """The markdown table of one readme-numbers result, with the commit it was run at."""
    n = result["numbers"]
    low, high = n["final_ci95"]
    vs, sc = n["vs_best_baseline"], n["vs_scratch"]
    ratio = "-" if n["freeze_ratio"] is None else f"{n['freeze_ratio']:.2f}"
    # The final model's regime, and which candidate it is when fine_tune handed on a baseline's model.
    handed_on = n.get("handed_on", "fine_tune")
    regime = n["regime"] + ("" if handed_on == "fine_tune" else f": the {candidate_words(handed_on)}")
    return (
        "\n".join(
            [
                f"{'`make run` on a fresh clone of commit' if result.get('command') else 'Run at commit'} "
                f"`{result['commit']}` ({result['when']}, {result['machine']}); "
                f"{result['train_per_class']} training images per class, {n['test_images']} test images.",
                "",
                "| final (95% CI) | frozen features + head | from scratch | vs best baseline (McNemar p) | "
                "vs scratch (McNemar p) | regime | freeze ratio (layers) | wall time |",
                "|---|---|---|---|---|---|---|---|",
                f"| {n['final']:.3f} ({low:.3f}-{high:.3f}) | {n['frozen']:.3f} | {n['scratch']:.3f} | "
                f"{vs['name']} {vs['delta']:+.3f} (p {vs['mcnemar_p']:.2g}) | "
                f"{sc['delta']:+.3f} (p {sc['mcnemar_p']:.2g}) | "
                f"{regime} | {ratio} ({n['frozen_layers']}) | {n['wall_seconds'] / 60:.1f} min |",
            ]
        )
        + "\n"
    )


def markers(name: str) -> tuple[str, str]:
    """The opening and closing marker lines of the generated block NAME."""
    return f"<!-- readme-numbers:{name} -->", f"<!-- /readme-numbers:{name} -->"


def splice(text: str, name: str, block: str) -> str:
    """`text` with the lines between `<!-- readme-numbers:NAME -->` and `<!-- /readme-numbers:NAME -->` replaced."""
    start, end = markers(name)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} block: add the two markers where the table goes")
    return pattern.sub(lambda _: f"{start}\n{block.rstrip()}\n{end}", text)


def grid_summary(grid: dict, stem: str = "data_size") -> str:
    """A grid's cell means (the summary table of benchmarks/results/STEM.md) with its commit."""
    body = grid_markdown({**grid, "rows": []}).split("\n## Rows measured")[0].splitlines()[4:]
    settings = grid.get("settings", {})
    return "\n".join(
        [
            f"Grid run at commit `{settings.get('commit', '?')}` "
            f"(`benchmarks/results/{stem}.md`: every row, settings and what was cut).",
            "",
            *body,
        ]
    )


def grid_block(path: Path) -> str:
    """The README block a grid file fills: data_size.json -> `grid`, data_size_seen.json -> `grid-seen`."""
    return "grid" + path.stem.partition("data_size")[2].replace("_", "-")


def update_readme(readmes: list[Path], result: dict, grids: dict[Path, dict]) -> None:
    """Rewrite the generated blocks: the default's numbers and each grid's summary (those with rows).

    A block is filled in whichever of `readmes` holds its markers (the README the newcomer reads, or
    benchmarks/README.md for a grid's history); one that none holds is an error naming the markers to add.
    """
    texts = {path: path.read_text(encoding="utf-8") for path in readmes}
    blocks = {"default": table(result)}
    blocks.update({grid_block(path): grid_summary(grid, path.stem) for path, grid in grids.items() if grid.get("rows")})
    for name, block in blocks.items():
        start, end = markers(name)
        holder = next((path for path, text in texts.items() if start in text), None)
        if holder is None:
            names = ", ".join(str(path) for path in readmes)
            raise SystemExit(f"no {start} ... {end} block in {names}: add the two markers where the table goes")
        texts[holder] = splice(texts[holder], name, block)
    for path, text in texts.items():
        path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    """CLI: run the default pipeline in a scratch folder, write the result files and the README blocks."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.readme_numbers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=RESULTS / "readme_numbers.json")
    p.add_argument(
        "--readme",
        type=Path,
        nargs="+",
        default=[REPO / "README.md", REPO / "benchmarks/README.md"],
        help="the files whose readme-numbers blocks are rewritten (each block where its markers are)",
    )
    p.add_argument(
        "--grid",
        type=Path,
        nargs="+",
        default=[
            RESULTS / f"{stem}.json"
            for stem in (
                "data_size",
                "data_size_seen",
                "data_size_25",
                "data_size_rule",
                "data_size_near5",
                "data_size_near5_full",
                "data_size_full",
                "data_size_full_heldout",
                "data_size_full_pooled",
            )
        ],
        help="grid result files; each fills its README block (grid_block), a missing file none",
    )
    p.add_argument("--from-json", action="store_true", help="no run: rewrite the .md and README from --out")
    p.add_argument(
        "--adopt",
        action="store_true",
        help="also copy the run's dvc.lock and the report files git keeps into this checkout (what to commit)",
    )
    args = p.parse_args(argv)
    if args.from_json:
        result = read_json(args.out)
    else:
        result = run_make_run(args.adopt)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text("# README numbers\n\n" + table(result), encoding="utf-8")
    update_readme(args.readme, result, {path: read_json(path) for path in args.grid})
    print(table(result))
    return result


if __name__ == "__main__":
    main()
