"""Scale benchmark: peak memory, throughput and disk of the data steps at 1k / 10k / 100k images.

For each size the benchmark writes a seeded synthetic dataset (10 classes, JPEGs of 64-96 px per side, a
class-coloured shape on noise) and runs, each as its own process as `dvc repro` does, with the arguments the
pipeline declaration gives (pipelines/graph.py): `make_subset` (80/10/10 % of every class), `augment`,
`extract_features` (a VGG-style backbone at 32 px saved by the benchmark), `tune_trial` (a cached tuning
trial at 96 px and the full-model trial beside it, `benchmarks/scale_trial.py`) and `fine_tune_epoch`, one epoch of
what `components/fine_tune.py` does (`tlpipe.models.fitting.build_model`, `split_source` in `auto` mode:
decoded in memory up to 20,000 images, streamed from the files above, `any_batches`, augmented).
`validate_data` is not run: the benchmark writes its passed result so the next steps accept the subset.

Per step: peak RSS of the process (`os.wait4`'s rusage), images per second net of the process start-up
(the same module run with `--help`, timed once per step), and the disk its outputs use.

`python -m benchmarks.scale --sizes 1000 10000 100000 --out benchmarks/results/scale.json` (also writes
scale.md next to it). `python -m benchmarks.scale epoch ...` is the fine_tune-like child process.
`--steps tune_trial` measures only the trial (make_subset runs first; augment is not needed at 96 px).
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
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import yaml

from benchmarks.scale_report import STEPS, verdict, write_md

REPO = Path(__file__).resolve().parents[1]
CLASSES, SIZE, FILTERS = 10, 32, [16, 32, 64]
# tune_trial: 96 px, frozen up to block2_pool (24 x 24 x 24 float16 = 27 KiB per image, 2.5 GB at 100k
# images): above tune's 2 GiB memory budget at 100k, so that size runs with the activations on disk.
TRIAL_SIZE, TRIAL_FILTERS, TRIAL_BOUNDARY = 96, [8, 24, 32], "block2_pool"


def _image(args: tuple[Path, int, int, int]) -> None:
    from PIL import Image, ImageDraw

    root, seed, cls, i = args
    rng = np.random.default_rng([seed, cls, i])
    w, h = (int(v) for v in rng.integers(64, 97, 2))
    pixels = rng.normal(127, 40, (h, w, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    colour = tuple(int(v) for v in np.array([cls * 25, 255 - cls * 25, (cls * 97) % 256]))
    x, y = rng.integers(0, w // 3), rng.integers(0, h // 3)
    box = (int(x), int(y), int(x + w // 2), int(y + h // 2))
    (ImageDraw.Draw(image).ellipse if cls % 2 else ImageDraw.Draw(image).rectangle)(box, fill=colour)
    image.save(root / f"c{cls}" / f"{i:06d}.jpg", quality=90)


def make_dataset(root: Path, images: int, seed: int = 0) -> None:
    """`images` JPEGs in class folders c0..c9 under `root` (same seed, same files)."""
    for cls in range(CLASSES):
        (root / f"c{cls}").mkdir(parents=True, exist_ok=True)
    jobs = [(root, seed, i % CLASSES, i // CLASSES) for i in range(images)]
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_image, jobs, chunksize=500)


def du_mb(*paths: Path) -> float:
    """Disk used by files under `paths`, MB."""
    return round(
        sum(f.stat().st_blocks * 512 for p in paths if p.exists() for f in [p, *p.rglob("*")] if f.is_file()) / 2**20, 2
    )


def measure(cmd: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Run `cmd`; returns (wall seconds, peak RSS MB of that process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def project(work: Path, raw: Path, images: int, backbone: Path) -> tuple[Path, dict]:
    """params.yaml for this size; returns it and the commands of the steps (from the pipeline declaration)."""
    from pipelines.graph import argv, build
    from tlpipe.config import load_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    per_class = images // CLASSES
    val = test = max(1, per_class // 10)
    params["data"]["source"] = str(raw)
    params["make_subset"].update(train_per_class=per_class - val - test, val_per_class=val, test_per_class=test)
    params["model"].update(backbone=str(backbone), weights="none", image_size=SIZE)
    params["tracking"]["default_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    steps = {s.name: s for s in build(load_params(params_file))}
    every = list(steps.values())
    cmds = {
        name: [sys.executable, "-m", f"components.{name}", "--params", str(params_file), *argv(steps[name], every)]
        for name in ("make_subset", "augment", "extract_features")
    }
    cmds["fine_tune_epoch"] = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "epoch",
        "--subset",
        "data/subset",
        "--backbone",
        str(backbone),
    ]
    cmds["tune_trial"] = [
        sys.executable,
        "-m",
        "benchmarks.scale_trial",
        "--subset",
        "data/subset",
        "--backbone",
        str(backbone.with_name("trial_backbone.keras")),
        "--cache",
        "tune_cache",
        "--report",
        "tune_trial.json",
    ]
    train = CLASSES * (per_class - val - test)
    # tune_trial: its img/s is the training images per second of a cached epoch (the child measures it).
    images_of = {
        "make_subset": images,
        "augment": train,
        "extract_features": images,
        "tune_trial": train,
        "fine_tune_epoch": CLASSES * (per_class - test),
    }
    outs = {
        "make_subset": ["data/subset"],
        "augment": ["data/augmented", "reports/augment"],
        "extract_features": ["data/features"],
        "tune_trial": ["tune_cache"],
        "fine_tune_epoch": [],
    }
    return params_file, {n: (cmds[n], images_of[n], outs[n]) for n in STEPS}


def run_size(
    images: int, work: Path, backbone: Path, startup: dict, load: list, steps: tuple[str, ...] = STEPS
) -> list[dict]:
    """Dataset, then every step in its own process; one row per step."""
    from tlpipe.contracts import ValidationResult

    raw = work / "raw"
    make_dataset(raw, images)
    _, plan = project(work, raw, images, backbone)
    rows = []
    for step, (cmd, n, outs) in plan.items():
        if step not in steps and step != "make_subset":
            continue
        if step not in startup:  # interpreter start-up and the imports (mlflow too), without the work
            module = {"fine_tune_epoch": "tlpipe.models.fitting", "tune_trial": "tlpipe.tuning.trial"}.get(step, cmd[2])
            startup[step] = measure([sys.executable, "-c", f"import mlflow, {module}"], work, work / "startup.log")[0]
        load.append({"images": images, "before": step, "load1": os.getloadavg()[0]})
        wall, rss = measure(cmd, work, work / f"{step}.log")
        if step == "make_subset":
            ValidationResult(
                success=True, images=images, classes=[f"c{c}" for c in range(CLASSES)], expectations=0, quarantined=0
            ).write(work / "data" / "validation")
        if step not in steps:
            continue  # ran only to make the subset the measured steps read
        rows.append(
            {
                "images": images,
                "step": step,
                "step_images": n,
                "peak_rss_mb": round(rss, 1),
                "img_per_s": round(n / max(wall - startup[step], 1e-3), 1),
                "img_per_s_wall": round(n / wall, 1),
                "wall_s": round(wall, 2),
                "startup_s": round(startup[step], 2),
                "disk_mb": du_mb(*(work / o for o in outs)),
            }
        )
        if step == "tune_trial":  # the child's own measurements: cached vs full epoch, memory, FLOPs limit
            rows[-1].update(json.loads((work / "tune_trial.json").read_text()))
        print(json.dumps(rows[-1]), flush=True)
    rows.append({"images": images, "step": "raw_dataset", "disk_mb": du_mb(raw)})
    return rows


def epoch(argv: list[str]) -> None:
    """Child process: one epoch of fine_tune's training on the subset (its model, data path and augmentation)."""
    from tlpipe.contracts import HyperParams
    from tlpipe.data.augmentation import build_augmenter
    from tlpipe.data.datasets import any_batches, split_source
    from tlpipe.models.backbones import load_backbone
    from tlpipe.models.fitting import build_model  # what fine_tune trains
    from tlpipe.sections import AugmentConfig

    p = argparse.ArgumentParser(prog="python -m benchmarks.scale epoch")
    p.add_argument("--subset", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)

    x, y, classes = split_source(Path(args.subset), "train", SIZE, "auto")
    x_val, y_val, _ = split_source(Path(args.subset), "val", SIZE, "auto")
    hp = HyperParams(freeze_ratio=0.5, learning_rate=1e-4, dropout=0.3, head_units=64)
    model, _ = build_model(load_backbone(args.backbone, "none", SIZE), "none", SIZE, hp, len(classes), None)
    augmenter = build_augmenter(AugmentConfig(), 42)
    model.fit(
        any_batches(x, y, SIZE, args.batch, augmenter=augmenter, shuffle_seed=42),
        validation_data=any_batches(x_val, y_val, SIZE, args.batch),
        epochs=1,
        verbose=0,
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: run the sizes, write the JSON and the .md."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["epoch"]:
        return epoch(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/scale.json")
    p.add_argument("--work", type=Path, help="keep the projects here (default: a temporary folder, removed)")
    p.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(STEPS),
        help="measure only these (make_subset always runs); other rows of --out are kept",
    )
    args = p.parse_args(argv)
    from benchmarks.machine import machine_facts
    from tlpipe.models.vgg import vgg_style

    base = args.work or Path(tempfile.mkdtemp(prefix="tlpipe-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    vgg_style(SIZE, FILTERS).save(base / "backbone.keras")
    vgg_style(TRIAL_SIZE, TRIAL_FILTERS).save(base / "trial_backbone.keras")
    kept = []
    if set(args.steps) != set(STEPS) and args.out.is_file():  # re-measure some steps, keep the other rows
        kept = [
            r for r in json.loads(args.out.read_text())["rows"] if r.get("step") not in (*args.steps, "raw_dataset")
        ]
    rows, load, startup = [], [], {}
    machine = machine_facts()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for images in args.sizes:
            work = base / str(images)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            rows += run_size(images, work, base / "backbone.keras", startup, load, args.steps)
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)  # 100k images and their outputs are gigabytes
            # Written after every size, so a long run that is stopped still leaves the sizes it finished.
            result = {
                "rows": sorted(
                    [*kept, *rows], key=lambda r: (r["images"], STEPS.index(r["step"]) if r["step"] in STEPS else 99)
                ),
                "machine": machine,
                "load": [*load, {"after": images, "load1": os.getloadavg()[0]}],
                "parameters": {"sizes": args.sizes, "classes": CLASSES, "image_size": SIZE, "filters": FILTERS},
            }
            result["verdict"] = verdict(result["rows"])
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            write_md(result, args.out.with_suffix(".md"))
    finally:
        if not args.work:
            shutil.rmtree(base, ignore_errors=True)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
