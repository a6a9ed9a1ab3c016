"""Tuning-trial benchmark: cached-activation trials vs full-model trials (P1), median pruning vs none (P5).

The project is the embedded default, built by the real steps through the pipeline declaration
(``pipelines.local.run_steps``): ``make_digits`` -> ``make_subset`` -> ``validate_data`` -> pre-augmented
copies (``augment``) -> ``pretrain_backbone`` (the VGG-style CNN) -> ``extract_features`` -> ``train_head``. It
is built in a child process, as dvc runs each step in its own process, so the measuring process has
TensorFlow op determinism off, as the ``tune`` step has.

P1 (one trial, ``tlpipe.tuning.trial.run_trial``): the same trial on activations cached at the freeze
boundary vs on the full model, at freeze ratios 0.25 / 0.5 / 0.75 / 0.9. With F the backbone's forward
FLOPs per image and u the share of them above the boundary (computed per layer from the layer shapes), a
full-model training step costs ~ F + 2uF per image (forward everything, backward the unfrozen part) and a
cached one ~ 3uF, so the expected per-epoch ratio is (1 + 2u) / (3u). Per trial the benchmark takes the
median steady epoch (epochs 2..E), training part only (Keras' validation pass is timed apart). Each repeat
runs the full and the cached trial back to back (full, cached / cached, full alternately, ratio by ratio),
so machine noise hits both arms alike; the measured ratio is the median over repeats of full / cached
within a repeat. The one-off cache build is timed separately.
A head-only cached trial (ratio 1.0) measures the fixed per-step cost that no FLOP count sees. P1 runs at
the project's 32 px and again at 64 px (the same pretrained weights on the digits resized), where F is 4x
larger and the per-step cost is not.

P5 (a study, ``tlpipe.tuning.study.create_study`` + ``tlpipe.tuning.worker.Worker``, with the tune step's
recipe and search space): the median pruner vs no pruning, same seed and
trial budget, each in its own temporary SQLite storage and activation cache: epochs spent and best value.
One pair of studies per seed (42, 43, 44), each pair judged on its own.

`python -m benchmarks.tune_trials --out benchmarks/results/tune_trials.json` (also writes a .md table next
to the JSON).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # decode/extract progress bars would only clutter the log

import yaml  # noqa: E402

from benchmarks.machine import machine_facts  # noqa: E402
from benchmarks.tune_trials_cached_epoch import P1Setup, bench_p1
from benchmarks.tune_trials_pruned_study import P5_BEST_TOLERANCE, P5_EPOCHS_TARGET, bench_p5
from benchmarks.tune_trials_report import P1_TARGET, markdown, notes

REPO = Path(__file__).resolve().parents[1]
RATIOS = (0.25, 0.5, 0.75, 0.9)


# ------------------------------------------------------------------------------------------ project


def quiet() -> None:
    """Silence the warnings the steps' CLI silences too (run_main), so the log shows progress."""
    for message in (r".*shuffle=True.*was passed", r".*is an experimental feature", r".*is experimental \("):
        warnings.filterwarnings("ignore", message=message)


def project_params(root: Path, args: argparse.Namespace) -> Path:
    """The repo's params.yaml with the benchmark's size knobs and stores under `root`; returns its path.

    The embedded default: builtin digits and our own pretrained backbone, laid out as dvc.yaml lays it out
    (data/subset, data/augmented, models/backbone, models/head, ...).
    """
    from tlpipe.sections import BUILTIN, PRETRAIN

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["data"]["source"] = BUILTIN
    raw["make_digits"]["image_size"] = args.image_size
    raw["make_subset"].update(
        train_per_class=args.train_per_class, val_per_class=args.val_per_class, test_per_class=args.val_per_class
    )
    raw["augment"]["copies"] = args.copies
    raw["model"].update(backbone=PRETRAIN, weights="none", image_size=args.image_size)
    raw["pretrain_backbone"].update(source=BUILTIN, epochs=args.pretrain_epochs)
    raw["tracking"]["default_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    raw["tune"].update(storage=f"sqlite:///{root / 'optuna.db'}", timeout=None)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


PROJECT_STEPS = (
    "make_digits",
    "make_subset",
    "validate_data",
    "augment",
    "pretrain_backbone",
    "extract_features",
    "train_head",
)


def prepare_project(root: Path, params_file: Path) -> dict:
    """Build the embedded default project under `root` by running the real steps through the pipeline
    declaration (pipelines.local.run_steps) up to train_head; return what each step took.

    Runs in a child process: pretraining turns TensorFlow op determinism on for its whole process.
    """
    import json

    from pipelines.local import run_steps

    quiet()
    seconds = {}
    for name in PROJECT_STEPS:
        start = time.perf_counter()
        ran = run_steps(root, [name], params_file)
        if ran != [name]:
            raise SystemExit(f"the pipeline declaration has no step {name} for these params (ran {ran})")
        seconds[name] = round(time.perf_counter() - start, 2)

    def metric(step: str) -> float:
        return round(json.loads((root / f"reports/{step}/metrics.json").read_text())["val_accuracy"], 4)

    return {
        "step_seconds": seconds,
        "pretrain_val_accuracy": metric("pretrain_backbone"),
        "head_val_accuracy": metric("train_head"),
    }


def build_project(root: Path, params_file: Path) -> dict:
    """Run prepare_project in a fresh (spawned) interpreter and return its facts."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(prepare_project, root, params_file).result()


# ---------------------------------------------------------------------------------------------- FLOPs


# ----------------------------------------------------------------------------------------------- P1


def size_variant(root: Path, params_file: Path, size: int) -> dict:
    """Overrides for P1 at another input size: the same pretrained weights, data resized to `size`.

    The VGG-style CNN is convolutions + global pooling, so its weights fit any input size; the backbone is
    rebuilt at `size` with them and the training split's augmented copies are made again at `size`.
    """
    import numpy as np

    from tlpipe.config import load_params
    from tlpipe.contracts import BACKBONE_FILE, COPIES_FILE
    from tlpipe.data.augmentation import augmented_copies, build_augmenter
    from tlpipe.data.datasets import load_split
    from tlpipe.models.backbones import load_backbone
    from tlpipe.models.vgg import vgg_style  # the architecture pretrain_backbone trains

    params = load_params(params_file)
    backbone = vgg_style(size, list(params.pretrain_backbone.filters))
    pretrained = load_backbone(str(root / "models/backbone"), params.model.weights, params.model.image_size)
    backbone.set_weights(pretrained.get_weights())
    model_dir = root / f"models/backbone_{size}px"
    model_dir.mkdir(parents=True)
    backbone.save(model_dir / BACKBONE_FILE)
    images, labels, _ = load_split(root / "data/subset", "train", size)
    copies = augmented_copies(images, build_augmenter(params.augment, params.seed), params.augment.copies)
    augmented = root / f"data/augmented_{size}px"
    augmented.mkdir(parents=True)
    np.save(augmented / COPIES_FILE, copies)  # as augment writes it: copy-major rows
    return {"model.image_size": size, "backbone": str(model_dir), "augmented": augmented}


# ----------------------------------------------------------------------------------------------- P5


# -------------------------------------------------------------------------------------------- report


# ---------------------------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line: output path and the size knobs (`--help` lists them)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_trials", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/tune_trials.json", help="result JSON (.md beside it)")
    p.add_argument("--image-size", type=int, default=32, help="the project's image size (model, make_digits)")
    p.add_argument("--train-per-class", type=int, default=100, help="make_subset.train_per_class")
    p.add_argument("--val-per-class", type=int, default=30, help="make_subset.val_per_class (and test)")
    p.add_argument("--copies", type=int, default=2, help="augment.copies: pre-augmented training variants")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="pretrain_backbone.epochs")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="P1 freeze ratios, comma-separated")
    p.add_argument("--p1-sizes", default="32,64", help="P1 input sizes, comma-separated (reuse the weights)")
    p.add_argument("--p1-epochs", type=int, default=4, help="epochs per P1 trial (epoch 1 is warm-up)")
    p.add_argument("--p1-repeats", type=int, default=3, help="P1 repeats per ratio and arm (best reported)")
    p.add_argument("--trials", type=int, default=12, help="P5 trials per study")
    p.add_argument("--trial-epochs", type=int, default=6, help="P5 tune.epochs")
    p.add_argument("--p5-seeds", default="42,43,44", help="P5 seeds, comma-separated: a pair of studies each")
    p.add_argument("--workdir", default=None, help="project folder (default: a temp dir, removed after)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Build the project, run P1 and P5, write the JSON and the Markdown next to it; return the result."""
    args = parse(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    import optuna
    import tensorflow as tf

    from tlpipe.contracts import write_json

    tf.get_logger().setLevel("ERROR")
    quiet()
    out = Path(args.out)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tlpipe-bench-tune-"))
    root.mkdir(parents=True, exist_ok=True)
    ratios = [float(r) for r in args.ratios.split(",") if r]
    try:
        params_file = project_params(root, args)
        project = build_project(root, params_file)
        print(f"project built in {root}: {project}", flush=True)
        p1 = []
        for size in _ints(args.p1_sizes):
            overrides = {} if size == args.image_size else size_variant(root, params_file, size)
            setup = P1Setup(root, params_file, args.p1_epochs, overrides)
            p1.append(bench_p1(setup, ratios, args.p1_repeats))
        seeds = _ints(args.p5_seeds)
        p5 = bench_p5(root, params_file, args.trials, args.trial_epochs, seeds) if seeds else None
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    passes = [r["pass"] for block in p1 for r in block["rows"]]
    passes += [ok for pair in (p5["pairs"] if p5 else []) for ok in (pair["epochs_pass"], pair["best_pass"])]
    knobs = (
        "image_size",
        "train_per_class",
        "val_per_class",
        "copies",
        "pretrain_epochs",
        "p1_epochs",
        "p1_repeats",
        "trials",
        "trial_epochs",
    )
    result = {
        "benchmark": "tune_trials",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.tune_trials", *(argv or sys.argv[1:])]),
        "machine": {**machine_facts(), "optuna": optuna.__version__},
        "parameters": {k: getattr(args, k) for k in knobs}
        | {
            "ratios": ratios,
            "p1_sizes": _ints(args.p1_sizes),
            "p5_seeds": _ints(args.p5_seeds),
            "p1_statistic": "per trial: median of epochs 2..E, training part only (epoch begin to "
            "validation start); measured ratio: median over repeats of full / cached "
            "within a repeat (the two trials run back to back)",
            "flops_are": "2 x MACs for Conv2D/Dense (+ bias), 2 per element for BatchNormalization, 1 "
            "per input element for pooling, 1 per output element otherwise; forward, per image",
        },
        "project": project,
        "p1": p1,
        "p5": p5,
        "targets": {
            "p1_measured_over_expected": P1_TARGET,
            "p5_epochs_ratio": P5_EPOCHS_TARGET,
            "p5_best_tolerance": P5_BEST_TOLERANCE,
        },
        "pass": bool(passes) and all(passes),
        "load_average_1_5_15": {
            "start": [round(v, 2) for v in load_before],
            "end": [round(v, 2) for v in os.getloadavg()],
        },
    }
    result["notes"] = notes(result)
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_json(out, result)
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(
        f"wrote {out} and {out.with_suffix('.md')} ({result['wall_seconds']:.0f} s): pass={result['pass']}", flush=True
    )
    return result


if __name__ == "__main__":
    main()
