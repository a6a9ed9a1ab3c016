"""Is our own backbone a transfer source that beats training from scratch on the digits, for any recipe?

Issue 22 asks for an embedded default where `make run` shows transfer beating scratch with McNemar p < 0.05.
The grid (benchmarks/data_size.py) never showed it, and the tuner picked scratch from 10 images per class up.
This benchmark asks the question beneath: with the backbone pretrained on digits 0-4 (the embedded source), does
fine-tuning it on digits 5-9 beat the same architecture trained from new weights, each with its learning rate
chosen on the validation split, on subsets the grid never used (held-out subset seeds)? And would a different
pretraining recipe (augmented, longer, wider) make the source worth more?

Per subset seed and size: train/val drawn per class from the target digits, every remaining target image is a
test image. Arms, scored on the same test images:
- frozen: the pretrained backbone frozen, a head trained on top (the frozen-features candidate);
- transfer: the whole pretrained model fine-tuned, learning rate picked on validation loss from `--transfer-lrs`;
- scratch: the same architecture from new weights, learning rate picked the same way from `--scratch-lrs`.
Every arm: the pipeline's augmentation (params.yaml `augment`), Adam, early stopping on validation loss (restoring
the best epoch) under one cap. Per cell: mean accuracies, and transfer vs scratch per seed (exact McNemar).
Plain Keras `fit` on arrays, not the pipeline's steps: the question is the source, not the product's selection.

    python -m benchmarks.transfer_source                                 # sizes 5 10, seeds 1 2 3, 3 recipes
    python -m benchmarks.transfer_source --quick --out /tmp/ts.json      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# name -> pretraining recipe; "pipeline" is what pretrain_backbone does with params.yaml as committed.
RECIPES = {
    "pipeline": {"filters": [16, 32, 64], "epochs": 10, "augment": False},
    "augmented_30": {"filters": [16, 32, 64], "epochs": 30, "augment": True},
    "wide_augmented_30": {"filters": [32, 64, 128], "epochs": 30, "augment": True},
}


def images(size: int) -> tuple[np.ndarray, np.ndarray]:
    from components.make_digits import digits_images

    grey, labels = digits_images(size)
    return np.repeat(grey[..., None], 3, axis=-1).astype("float32"), labels


def augmenter(seed: int):
    from tlpipe.config import load_params
    from tlpipe.data.augmentation import build_augmenter

    return build_augmenter(load_params(REPO / "params.yaml").augment, seed)


def pretrain(recipe: dict, x: np.ndarray, y: np.ndarray, size: int, epochs: int, seed: int):
    """The backbone trained on the source classes with this recipe (as pretrain_backbone does, 85/15 split)."""
    import keras

    from tlpipe.models.training import set_determinism
    from tlpipe.models.vgg import vgg_style

    set_determinism(seed, True)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * 0.85)
    backbone = vgg_style(size, recipe["filters"])
    layers = [keras.Input((size, size, 3)), *([augmenter(seed)] if recipe["augment"] else []), backbone]
    model = keras.Sequential([*layers, keras.layers.Dense(len(SOURCE), activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[order[:cut]], y[order[:cut]], batch_size=64, epochs=epochs, verbose=0)
    return backbone


def subset(labels: np.ndarray, seed: int, per_class: int, val_per_class: int) -> tuple[list, list, list]:
    """Indices of train / val / test: per target class, a seeded draw; every image left over is a test image."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for digit in TARGET:
        pick = rng.permutation(np.flatnonzero(labels == digit))
        train += list(pick[:per_class])
        val += list(pick[per_class : per_class + val_per_class])
        test += list(pick[per_class + val_per_class :])
    return train, val, test


def fit(backbone, data: tuple, lr: float, seed: int, *, frozen: bool, epochs: int, patience: int) -> dict:
    """Backbone + head, early-stopped on validation loss; validation loss and per-test-image correctness."""
    import keras

    from tlpipe.models.training import set_determinism

    set_determinism(seed, True)
    (xt, yt), (xv, yv), (xe, ye) = data
    backbone.trainable = not frozen
    model = keras.Sequential(
        [
            keras.Input(xt.shape[1:]),
            augmenter(seed),
            backbone,
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(len(TARGET), activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True)
    # 4 augmented passes per epoch: 5 or 10 images per class make a single pass too short an epoch to judge.
    history = model.fit(
        np.concatenate([xt] * 4), np.concatenate([yt] * 4), batch_size=32, epochs=epochs, verbose=0,
        validation_data=(xv, yv), callbacks=[stop],
    )  # fmt: skip
    ok = np.argmax(model.predict(xe, verbose=0), axis=1) == ye
    return {"val_loss": float(min(history.history["val_loss"])), "ok": ok, "lr": lr}


SCRATCH: dict[tuple, dict] = {}


def best(runs: list[dict]) -> dict:
    """The run with the lowest validation loss: chosen on validation, never on test."""
    return min(runs, key=lambda r: r["val_loss"])


def cell(x, y, weights: dict, recipe: str, per_class: int, seed: int, args: argparse.Namespace) -> dict:
    from tlpipe.models.vgg import vgg_style
    from tlpipe.reports.stats import mcnemar

    train, val, test = subset(y, seed, per_class, args.val_per_class)
    data = tuple((x[ix], y[ix] - TARGET[0]) for ix in (train, val, test))
    filters = RECIPES[recipe]["filters"]

    def pretrained():
        backbone = vgg_style(args.image_size, filters)
        backbone.set_weights(weights[recipe])
        return backbone

    run = {"epochs": args.epochs, "patience": args.patience}
    frozen = fit(pretrained(), data, 1e-3, seed, frozen=True, **run)
    transfer = best([fit(pretrained(), data, lr, seed, frozen=False, **run) for lr in args.transfer_lrs])
    key = (tuple(filters), per_class, seed)  # recipes with the same architecture share one scratch arm
    if key not in SCRATCH:
        fresh = [
            fit(vgg_style(args.image_size, filters), data, lr, seed, frozen=False, **run) for lr in args.scratch_lrs
        ]
        SCRATCH[key] = best(fresh)
    scratch = SCRATCH[key]
    paired = mcnemar(scratch["ok"], transfer["ok"])
    return {
        "recipe": recipe,
        "train_per_class": per_class,
        "seed": seed,
        "test_images": len(test),
        "frozen": float(frozen["ok"].mean()),
        "transfer": float(transfer["ok"].mean()),
        "scratch": float(scratch["ok"].mean()),
        "transfer_lr": transfer["lr"],
        "scratch_lr": scratch["lr"],
        "transfer_vs_scratch": {**paired, "delta_images": int(transfer["ok"].sum() - scratch["ok"].sum())},
    }


def run_recipes(args: argparse.Namespace) -> list[dict]:
    """Pretrain each recipe of `args.recipes`, then every (size, seed) cell of each; the rows."""
    x, y = images(args.image_size)
    source = np.isin(y, SOURCE)
    weights = {
        name: pretrain(
            RECIPES[name], x[source], y[source], args.image_size, args.pretrain_epochs or RECIPES[name]["epochs"], 42
        ).get_weights()
        for name in args.recipes
    }
    target = np.isin(y, TARGET)
    x, y = x[target], y[target]
    rows = []
    for recipe in args.recipes:
        for size in args.sizes:
            for seed in args.seeds:
                rows.append(row := cell(x, y, weights, recipe, size, seed, args))
                print(json.dumps({k: row[k] for k in ("recipe", "train_per_class", "seed", "frozen", "transfer", "scratch")}), flush=True)  # fmt: skip  # noqa: E501
    return rows


def parallel(groups: list[list[str]], args: argparse.Namespace) -> list[dict]:
    """One child process per architecture (recipes sharing one keep sharing their scratch arm); rows in order."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tlpipe-ts-") as tmp:
        procs = []
        for index, recipes in enumerate(groups):
            out = Path(tmp) / f"{index}.json"
            argv = [sys.executable, "-m", "benchmarks.transfer_source", "--jobs", "1", "--out", str(out)]
            argv += ["--recipes", *recipes, "--sizes", *map(str, args.sizes), "--seeds", *map(str, args.seeds)]
            argv += [
                "--epochs",
                str(args.epochs),
                "--patience",
                str(args.patience),
                "--image-size",
                str(args.image_size),
            ]
            argv += ["--val-per-class", str(args.val_per_class), "--transfer-lrs", *map(str, args.transfer_lrs)]
            argv += ["--scratch-lrs", *map(str, args.scratch_lrs)]
            argv += ["--pretrain-epochs", str(args.pretrain_epochs)] if args.pretrain_epochs else []
            procs.append((subprocess.Popen(argv, cwd=REPO), out))
        if any(proc.wait() for proc, _ in procs):
            raise SystemExit("transfer_source: a child process failed (its output is above)")
        return [row for _, out in procs for row in json.loads(out.read_text(encoding="utf-8"))["rows"]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer_source", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10], help="training images per target class")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="subset seeds (the grid used 42, 43)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--val-per-class", type=int, default=30)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=40, help="the cap of every arm")
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--pretrain-epochs", type=int, help="override every recipe's pretraining epochs")
    p.add_argument("--transfer-lrs", type=float, nargs="+", default=[3e-4, 1e-3])
    p.add_argument("--scratch-lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--jobs", type=int, default=2, help="architectures run in parallel processes")
    p.add_argument("--quick", action="store_true", help="smoke run: size 5, seed 1, two architectures, 2 epochs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/transfer_source.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.seeds, args.epochs, args.pretrain_epochs = [5], [1], 2, 1
        args.recipes = ["pipeline", "wide_augmented_30"]
        args.transfer_lrs, args.scratch_lrs = args.transfer_lrs[:1], args.scratch_lrs[:1]
    from benchmarks.machine import commit, machine
    from benchmarks.transfer_source_report import markdown, summary

    start = time.perf_counter()
    groups: dict[tuple, list[str]] = {}
    for name in args.recipes:
        groups.setdefault(tuple(RECIPES[name]["filters"]), []).append(name)
    if args.jobs > 1 and len(groups) > 1:
        rows = parallel(list(groups.values()), args)
    else:
        rows = run_recipes(args)
    result = {
        "commit": commit(),
        "machine": machine(),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "recipes": {k: RECIPES[k] for k in args.recipes},
        "note": (
            "Subset seeds held out from the grid (42, 43); every target image not drawn for train/val is a test "
            "image; learning rates chosen on validation loss; transfer vs scratch by exact McNemar per seed."
            + (" QUICK smoke run: not a result." if args.quick else "")
        ),
        "rows": rows,
        "summary": summary(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"transfer_source -> {args.out} ({result['seconds']} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
