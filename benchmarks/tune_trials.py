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
import gc
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # decode/extract progress bars would only clutter the log

import yaml  # noqa: E402

from benchmarks.input_pipeline import machine_facts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RATIOS = (0.25, 0.5, 0.75, 0.9)
P1_TARGET = 0.8  # measured ratio >= 0.8 x expected
P5_EPOCHS_TARGET = 0.6  # pruned study spends <= 0.6 of the unpruned study's epochs
P5_BEST_TOLERANCE = 0.01  # pruned best within 1 % of the unpruned best


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
    raw["make_subset"].update(train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                              test_per_class=args.val_per_class)
    raw["augment"]["copies"] = args.copies
    raw["model"].update(backbone=PRETRAIN, weights="none", image_size=args.image_size)
    raw["pretrain_backbone"].update(source=BUILTIN, epochs=args.pretrain_epochs)
    raw["tracking"]["default_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    raw["tune"].update(storage=f"sqlite:///{root / 'optuna.db'}", timeout=None)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


PROJECT_STEPS = ("make_digits", "make_subset", "validate_data", "augment", "pretrain_backbone", "extract_features",
                 "train_head")


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

    return {"step_seconds": seconds, "pretrain_val_accuracy": metric("pretrain_backbone"),
            "head_val_accuracy": metric("train_head")}


def build_project(root: Path, params_file: Path) -> dict:
    """Run prepare_project in a fresh (spawned) interpreter and return its facts."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(prepare_project, root, params_file).result()


# ---------------------------------------------------------------------------------------------- FLOPs


def layer_flops(layer) -> int:
    """Forward FLOPs per image of one layer: 2 x MACs for Conv2D/Dense, elementwise work for the rest.

    BatchNormalization (inference) counts 2 per element, pooling 1 per input element, anything else 1 per
    output element (ReLU, Rescaling, ...). Inputs count 0.
    """
    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return 0
    out = math.prod(layer.output.shape[1:])
    if isinstance(layer, keras.layers.Conv2D):
        fan_in = math.prod(layer.kernel_size) * layer.input.shape[-1] // layer.groups
        return 2 * out * fan_in + (out if layer.use_bias else 0)
    if isinstance(layer, keras.layers.Dense):
        return 2 * out * layer.input.shape[-1] + (out if layer.use_bias else 0)
    if isinstance(layer, keras.layers.BatchNormalization):
        return 2 * out
    if "Pooling" in type(layer).__name__:
        return math.prod(layer.input.shape[1:])
    return out


def backbone_flops(backbone) -> list[dict]:
    """Per-layer forward FLOPs per image of the backbone, in layer order (index = layer index)."""
    return [{"index": i, "name": layer.name, "type": type(layer).__name__, "flops": layer_flops(layer)}
            for i, layer in enumerate(backbone.layers)]


def unfrozen_share(layers: list[dict], frozen: int) -> float:
    """u: the share of the backbone's forward FLOPs in layers frozen+1.. (the part a trial trains)."""
    total = sum(r["flops"] for r in layers)
    return sum(r["flops"] for r in layers[frozen + 1 :]) / total


def expected_ratio(u: float) -> float:
    """Full-model step / cached step per image: (F + 2uF) / (3uF)."""
    return (1 + 2 * u) / (3 * u)


# ----------------------------------------------------------------------------------------------- P1


def epoch_clock():
    """A Keras callback timing each epoch's training part and its validation pass (fit calls on_test_*)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.train, self.val = [], []
            self._begin = self._val_begin = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = time.perf_counter()

        def on_test_begin(self, logs=None):
            self._val_begin = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            end = time.perf_counter()
            self.train.append(self._val_begin - self._begin)
            self.val.append(end - self._val_begin)

    return EpochClock()


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


class P1Setup:
    """What every P1 trial at one input size shares: params, data, head, backbone identity, the cache."""

    def __init__(self, root: Path, params_file: Path, epochs: int, overrides: dict):
        from tlpipe.config import load_params
        from tlpipe.contracts import HEAD_FILE
        from tlpipe.models.backbones import backbone_identity, preprocess_mode
        from tlpipe.tuning.trial import ActivationCache, Recipe, load_trial_data

        overrides = dict(overrides)
        augmented = overrides.pop("augmented", root / "data/augmented")
        self.spec = overrides.pop("backbone", str(root / "models/backbone"))
        self.params = load_params(params_file, overrides)
        cfg, model = self.params.tune, self.params.model
        size = model.image_size
        self.data = load_trial_data(root / "data/subset", augmented, size)
        self.head = root / "models/head" / HEAD_FILE
        self.identity = backbone_identity(self.spec, model.weights, size)
        # As the tune step builds it, except patience = epochs: every P1 trial runs all its epochs (no early stop).
        self.recipe = Recipe(seed=self.params.seed, image_size=size, preprocess=preprocess_mode(self.spec),
                             batch_size=self.params.fine_tune.batch_size, epochs=epochs, patience=epochs,
                             monitor=cfg.metric)
        self.cache = ActivationCache(root / f"p1_cache_{size}px", cfg.cache_max_bytes, cfg.cache_dtype)
        self.epochs = epochs

    def backbone(self):
        """A fresh copy of the pretrained backbone (the tune Worker loads one per trial too)."""
        from tlpipe.models.backbones import load_backbone

        return load_backbone(self.spec, self.params.model.weights, self.params.model.image_size)

    def hyper(self, ratio: float):
        """fine_tune's hyperparameters at `ratio` (speed does not depend on the learning rate)."""
        from tlpipe.contracts import HyperParams

        return HyperParams(freeze_ratio=ratio, learning_rate=self.params.fine_tune.learning_rate,
                           dropout=self.params.model.dropout, head_units=self.params.model.head_units)

    def build_cache(self, ratio: float) -> float:
        """Fill the cache at `ratio`'s boundary (train variants + val) as a trial would; return seconds."""
        from tlpipe.models.backbones import apply_freeze, freeze_plan
        from tlpipe.models.training import make_head
        from tlpipe.tuning.trial import cached_model

        backbone = self.backbone()
        plan = freeze_plan(backbone, ratio)
        apply_freeze(backbone, plan)
        head = make_head(self.head, backbone.output.shape[-1], len(self.data.classes), self.hyper(ratio))
        gc.collect()
        start = time.perf_counter()
        built = cached_model(backbone, plan, head, self.recipe, self.cache, self.identity, self.data)
        seconds = time.perf_counter() - start
        if built is None:
            raise SystemExit(f"ratio {ratio}: activations exceed tune.cache_max_bytes; P1 cannot run cached")
        return seconds

    def trial(self, ratio: float, cached: bool) -> dict:
        """One timed run_trial: whole wall time and per-epoch training / validation seconds."""
        from tlpipe.tuning.trial import run_trial

        clock = epoch_clock()
        backbone = self.backbone()
        gc.collect()
        start = time.perf_counter()
        out = run_trial(self.recipe, self.hyper(ratio), self.data, backbone, self.head,
                        self.cache if cached else None, self.identity, callbacks=[clock])
        wall = time.perf_counter() - start
        if out["mode"] != ("cached" if cached else "full"):
            raise SystemExit(f"ratio {ratio}: run_trial ran {out['mode']}, not the arm asked for")
        return {"wall_seconds": round(wall, 4), "train_epoch_seconds": [round(s, 4) for s in clock.train],
                "val_epoch_seconds": [round(s, 4) for s in clock.val], "plan": out["plan"]}


def steady(seconds: list[float]) -> float:
    """Median of epochs 2..E (epoch 1 traces the tf.functions), or epoch 1 when only one ran."""
    return statistics.median(seconds[1:] or seconds)


def arm_summary(runs: list[dict]) -> dict:
    """Raw runs, each run's median steady epoch (training part, validation pass), and their median/best."""
    train = [steady(r["train_epoch_seconds"]) for r in runs]
    val = [steady(r["val_epoch_seconds"]) for r in runs]
    return {
        "runs": [{k: v for k, v in r.items() if k != "plan"} for r in runs],
        "train_epoch_per_repeat": [round(t, 4) for t in train],
        "val_epoch_per_repeat": [round(v, 4) for v in val],
        "train_epoch_median": round(statistics.median(train), 4),
        "train_epoch_best": round(min(train), 4),
        "trial_wall_median": round(statistics.median(r["wall_seconds"] for r in runs), 4),
    }


def p1_row(ratio: float, layers: list[dict], full_runs: list[dict], cached_runs: list[dict], build: float,
           floor: dict, n_train: int, n_val: int) -> dict:
    """One freeze ratio: arithmetic (u, expected) next to the measurements, and its pass/fail.

    Ratios are medians over repeats of full / cached within a repeat: the two trials of a repeat run back
    to back, so they see the same load on a shared machine. So is the wall time a cached trial saves.
    """
    plan = full_runs[0]["plan"]
    u = unfrozen_share(layers, plan.frozen)
    expected = expected_ratio(u)
    full, cached = arm_summary(full_runs), arm_summary(cached_runs)
    pairs = list(zip(full["train_epoch_per_repeat"], cached["train_epoch_per_repeat"], strict=True))
    paired = [f / c for f, c in pairs]
    with_val = [(ft + fv) / (ct + cv) for (ft, ct), fv, cv in
                zip(pairs, full["val_epoch_per_repeat"], cached["val_epoch_per_repeat"], strict=True)]
    measured = statistics.median(paired)
    walls = [(f["wall_seconds"], c["wall_seconds"]) for f, c in zip(full_runs, cached_runs, strict=True)]
    saved = statistics.median(f - c for f, c in walls)
    return {
        "freeze_ratio": ratio,
        "frozen_layers": plan.frozen,
        "total_layers": plan.total,
        "boundary": plan.boundary,
        "effective_ratio": round(plan.effective_ratio, 4),
        "u": round(u, 5),
        "expected_ratio": round(expected, 3),
        "measured_ratio": round(measured, 3),
        "measured_ratio_per_repeat": [round(r, 3) for r in paired],
        "measured_over_expected": round(measured / expected, 3),
        "target": P1_TARGET,
        "pass": bool(measured >= P1_TARGET * expected),
        "measured_ratio_best_of_arms": round(full["train_epoch_best"] / cached["train_epoch_best"], 3),
        "expected_epoch_ratio_with_val": round(
            (n_train * (1 + 2 * u) + n_val) / (u * (3 * n_train + n_val)), 3),
        "measured_epoch_ratio_with_val": round(statistics.median(with_val), 3),
        "overhead_ceiling": round(full["train_epoch_median"] / floor["train_epoch_median"], 3),
        "cache_build_seconds": round(build, 4),
        "trial_wall_ratio": round(statistics.median(f / c for f, c in walls), 3),
        "trials_to_amortise_cache": round(build / saved, 2) if saved > 0 else None,
        "full": full,
        "cached": cached,
    }


def bench_p1(setup: P1Setup, ratios: list[float], repeats: int) -> dict:
    """Cache builds, then repeats of (full, cached) per ratio in alternating order, plus a head-only floor."""
    size = setup.params.model.image_size
    layers = backbone_flops(setup.backbone())
    builds = {}
    for ratio in [*ratios, 1.0]:
        builds[ratio] = setup.build_cache(ratio)
        print(f"P1 {size}px: cache at ratio {ratio} built in {builds[ratio]:.2f} s", flush=True)
    runs = {(ratio, arm): [] for ratio in ratios for arm in ("full", "cached")}
    floor_runs = []
    for rep in range(repeats):
        for index, ratio in enumerate(ratios):
            arms = ("full", "cached") if (rep + index) % 2 == 0 else ("cached", "full")
            for arm in arms:
                runs[(ratio, arm)].append(setup.trial(ratio, cached=arm == "cached"))
            full, cached = (steady(runs[(ratio, arm)][-1]["train_epoch_seconds"])
                            for arm in ("full", "cached"))
            print(f"P1 {size}px repeat {rep + 1}/{repeats} ratio {ratio}: full {full:.3f} s/epoch, "
                  f"cached {cached:.3f} s/epoch", flush=True)
        floor_runs.append(setup.trial(1.0, cached=True))
    floor = arm_summary(floor_runs)
    n_train, n_val = len(setup.data.labels), len(setup.data.val_images)
    batch = setup.params.fine_tune.batch_size
    steps = math.ceil(n_train / batch)
    return {
        "image_size": size,
        "backbone_layers": layers,
        "F_flops_per_image": sum(r["flops"] for r in layers),
        "train_images_per_epoch": n_train,
        "variants": len(setup.data.variants),
        "val_images": n_val,
        "batch_size": batch,
        "steps_per_epoch": steps,
        "epochs_per_trial": setup.epochs,
        "repeats": repeats,
        "cache_dtype": setup.params.tune.cache_dtype,
        "head_only_floor": {**floor, "cache_build_seconds": round(builds[1.0], 4),
                            "per_step_ms": round(1000 * floor["train_epoch_median"] / steps, 3)},
        "rows": [p1_row(ratio, layers, runs[(ratio, "full")], runs[(ratio, "cached")], builds[ratio], floor,
                        n_train, n_val) for ratio in ratios],
    }


# ----------------------------------------------------------------------------------------------- P5


def run_study(root: Path, params_file: Path, pruner: str, seed: int, trials: int, epochs: int) -> dict:
    """One study through the product's create_study + Worker (own SQLite storage and cache); its facts."""
    import mlflow

    from tlpipe.config import load_params
    from tlpipe.contracts import HEAD_FILE
    from tlpipe.models.backbones import backbone_identity, load_backbone, preprocess_mode
    from tlpipe.tuning.study import FINISHED, counts, create_study
    from tlpipe.tuning.trial import Recipe
    from tlpipe.tuning.worker import Defaults, Worker, WorkerSetup

    folder = root / f"p5_seed{seed}_{pruner}"
    folder.mkdir()
    params = load_params(params_file, {"seed": seed, "tune.pruner": pruner, "tune.n_trials": trials,
                                       "tune.epochs": epochs,
                                       "tune.storage": f"sqlite:///{folder / 'optuna.db'}"})
    cfg, model, spec = params.tune, params.model, str(root / "models/backbone")
    # The tune step's study, recipe and worker (components/tune.py Context), built from the library.
    recipe = Recipe(seed=params.seed, image_size=model.image_size, preprocess=preprocess_mode(spec),
                    batch_size=params.fine_tune.batch_size, epochs=cfg.epochs, patience=cfg.patience,
                    monitor=cfg.metric)
    start = time.perf_counter()
    study = create_study(cfg, f"{cfg.study_name}-p5-seed{seed}-{pruner}", params.seed)
    worker = Worker(WorkerSetup(cfg=cfg, recipe=recipe, defaults=Defaults(model.dropout, model.head_units),
                                subset=root / "data/subset", head=root / "models/head" / HEAD_FILE,
                                augmented=root / "data/augmented", cache_dir=folder / "cache",
                                load_backbone=lambda: load_backbone(spec, model.weights, model.image_size),
                                identity=backbone_identity(spec, model.weights, model.image_size)))
    with mlflow.start_run(run_name=f"p5 seed={seed} pruner={pruner}"):
        worker.work(study)
    wall = time.perf_counter() - start
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name in (*FINISHED, "FAIL")]
    rows = [{"number": t.number, "state": t.state.name, "params": dict(t.params),
             "regime": t.user_attrs.get("regime", "transfer"),
             "freeze_ratio": round(t.user_attrs["freeze_ratio"], 4),
             "learning_rate": t.params["learning_rate"], "mode": t.user_attrs.get("mode"),
             "epochs_run": t.user_attrs.get("epochs_run", 0), "value": t.value,
             "last_value": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values
             else None}
            for t in done]
    best = study.best_trial
    return {"pruner": pruner, "study_name": study.study_name, "direction": study.direction.name,
            "states": counts(study), "epochs_spent": sum(r["epochs_run"] for r in rows),
            "epochs_budget": trials * epochs, "best_value": best.value, "best_trial": best.number,
            "best_params": {"regime": best.user_attrs.get("regime", "transfer"),
                            "freeze_ratio": best.user_attrs["freeze_ratio"],
                            "learning_rate": best.params["learning_rate"]},
            "wall_seconds": round(wall, 2), "trials": rows}


def lost_winners(unpruned: dict, pruned: dict) -> list[int]:
    """Pruned trials whose unpruned twin (same number and params) beat the pruned study's best."""
    better = (lambda a, b: a > b) if unpruned["direction"] == "MAXIMIZE" else (lambda a, b: a < b)
    twins = {t["number"]: t for t in unpruned["trials"]}
    lost = []
    for t in pruned["trials"]:
        twin = twins.get(t["number"])
        if t["state"] != "PRUNED" or twin is None or twin["value"] is None:
            continue
        same = twin["params"] == t["params"]  # the same sampled point (regime, boundary, BatchNorm, rate)
        if same and better(twin["value"], pruned["best_value"]):
            lost.append(t["number"])
    return lost


def p5_pair(root: Path, params_file: Path, seed: int, trials: int, epochs: int) -> dict:
    """Unpruned and median-pruned studies with one seed; epochs spent and best values compared."""
    unpruned = run_study(root, params_file, "none", seed, trials, epochs)
    pruned = run_study(root, params_file, "median", seed, trials, epochs)
    for s in (unpruned, pruned):
        print(f"P5 seed {seed} pruner={s['pruner']}: {s['epochs_spent']} epochs, best {s['best_value']:.4f}, "
              f"{s['states']}, {s['wall_seconds']:.0f} s", flush=True)
    epochs_ratio = pruned["epochs_spent"] / unpruned["epochs_spent"]
    sign = 1 if unpruned["direction"] == "MAXIMIZE" else -1
    shortfall = sign * (unpruned["best_value"] - pruned["best_value"]) / abs(unpruned["best_value"])
    return {
        "seed": seed,
        "epochs_ratio": round(epochs_ratio, 4),
        "epochs_pass": bool(epochs_ratio <= P5_EPOCHS_TARGET),
        "best_shortfall": round(shortfall, 5),
        "best_pass": bool(shortfall <= P5_BEST_TOLERANCE),
        "pruned_trials_that_would_have_won": lost_winners(unpruned, pruned),
        "unpruned": unpruned,
        "pruned": pruned,
    }


def bench_p5(root: Path, params_file: Path, trials: int, epochs: int, seeds: list[int]) -> dict:
    """One (no pruning, median pruner) pair of studies per seed, in the product's tune code paths."""
    import mlflow
    import optuna

    from tlpipe.config import load_params

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = load_params(params_file)
    mlflow.set_tracking_uri(params.tracking.default_uri)
    mlflow.set_experiment("bench-tune-trials")  # creates the tracking tables before any study is timed
    pairs = [p5_pair(root, params_file, seed, trials, epochs) for seed in seeds]
    spent = {k: sum(p[k]["epochs_spent"] for p in pairs) for k in ("unpruned", "pruned")}
    return {
        "metric": params.tune.metric,
        "trials": trials,
        "epochs_per_trial": epochs,
        "pruner_settings": "MedianPruner(n_startup_trials=2, n_warmup_steps=1) from tlpipe.tuning.study.pruner",
        "epochs_target": P5_EPOCHS_TARGET,
        "best_tolerance": P5_BEST_TOLERANCE,
        "best_shortfall_is": "(unpruned best - pruned best) / |unpruned best|, sign flipped for minimised "
                             "metrics; <= 0 means the pruned study found as good or better",
        "pairs": pairs,
        "epochs_ratio_all_seeds": round(spent["pruned"] / spent["unpruned"], 4),
        "mean_best_shortfall": round(statistics.mean(p["best_shortfall"] for p in pairs), 5),
    }


# -------------------------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def markdown_p1(p1: dict) -> list[str]:
    """The P1 section for one input size."""
    floor = p1["head_only_floor"]
    lines = [
        "",
        f"## P1 at {p1['image_size']} px: one trial on cached activations vs on the full model",
        "",
        f"F = {p1['F_flops_per_image'] / 1e6:.2f} MFLOPs per image (backbone forward). "
        f"{p1['train_images_per_epoch']} training images per epoch (batch {p1['batch_size']}, "
        f"{p1['steps_per_epoch']} steps), {p1['val_images']} validation images, "
        f"{p1['epochs_per_trial']} epochs per trial, {p1['repeats']} repeats, cache {p1['cache_dtype']}. "
        "Per trial: the median steady epoch (epochs 2..E), training part only. **Measured = median over "
        "repeats of full / cached within a repeat** (the two run back to back); ms/epoch columns are "
        "medians over repeats.",
        "",
        "| freeze ratio | boundary (frozen/total) | u | expected (1+2u)/3u | full ms/epoch "
        "| cached ms/epoch | measured | measured/expected | result (>= 0.8) | cache build s "
        "| incl. val: expected / measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p1["rows"]:
        lines.append(
            f"| {r['freeze_ratio']} | {r['boundary']} ({r['frozen_layers']}/{r['total_layers']}) "
            f"| {r['u']:.4f} | {r['expected_ratio']:.2f} | {_ms(r['full']['train_epoch_median'])} "
            f"| {_ms(r['cached']['train_epoch_median'])} | {r['measured_ratio']:.2f} "
            f"| {r['measured_over_expected']:.2f} | {_verdict(r['pass'])} | {r['cache_build_seconds']:.2f} "
            f"| {r['expected_epoch_ratio_with_val']:.2f} / {r['measured_epoch_ratio_with_val']:.2f} |")
    lines += [
        "",
        "| freeze ratio | full trial s | cached trial s | trial ratio | epoch ratio per repeat "
        "| best full / best cached | overhead ceiling (full / floor) | trials to amortise the cache build |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in p1["rows"]:
        amortise = "n/a" if r["trials_to_amortise_cache"] is None else f"{r['trials_to_amortise_cache']:.2f}"
        per_repeat = ", ".join(f"{v:.2f}" for v in r["measured_ratio_per_repeat"])
        lines.append(
            f"| {r['freeze_ratio']} | {r['full']['trial_wall_median']:.2f} "
            f"| {r['cached']['trial_wall_median']:.2f} | {r['trial_wall_ratio']:.2f} "
            f"| {per_repeat} | {r['measured_ratio_best_of_arms']:.2f} | {r['overhead_ceiling']:.2f} "
            f"| {amortise} |")
    lines += [
        "",
        "Trial s: whole run_trial wall time (model build, tracing, every epoch), median over repeats. Trial "
        "ratio and the time a cached trial saves (which amortises the cache build) are medians of the "
        "within-repeat values.",
        "",
        "Head-only floor (cached trial at ratio 1.0: no backbone layer trains): "
        f"{_ms(floor['train_epoch_median'])} ms per training epoch, {floor['per_step_ms']:.1f} ms per step. "
        "A cached trial trains at least the head, so full / floor (the overhead ceiling) bounds the "
        "measured ratio whatever u is.",
    ]
    return lines


def _trial_cell(t: dict) -> str:
    value = t["value"] if t["value"] is not None else t["last_value"]
    shown = "-" if value is None else f"{value:.4f}"
    where = "scratch" if t.get("regime") == "scratch" else f"{t['freeze_ratio']:.3f}"
    params = f"{where}, {t['learning_rate']:.1e}"
    return f"{params}: {t['state'].lower()}, {t['epochs_run']}, {shown}"


def markdown_p5(p5: dict) -> list[str]:
    """The P5 section: one row per seed, then every trial of every study."""
    lines = [
        "",
        f"## P5: median pruner vs no pruning ({p5['trials']} trials x {p5['epochs_per_trial']} epochs "
        f"per study, metric {p5['metric']})",
        "",
        f"{p5['pruner_settings']}. Each seed runs both studies with the same sampler seed and trial budget.",
        "",
        "| seed | unpruned: epochs, best | pruned: epochs, best, states | epochs ratio (<= 0.6) "
        "| best shortfall (<= 1 %) | pruned trials that would have won | wall s (none / median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair in p5["pairs"]:
        u, p = pair["unpruned"], pair["pruned"]
        lines.append(
            f"| {pair['seed']} | {u['epochs_spent']}/{u['epochs_budget']}, {u['best_value']:.4f} "
            f"| {p['epochs_spent']}/{p['epochs_budget']}, {p['best_value']:.4f}, {p['states']} "
            f"| {pair['epochs_ratio']:.3f} {_verdict(pair['epochs_pass'])} "
            f"| {100 * pair['best_shortfall']:.2f} % {_verdict(pair['best_pass'])} "
            f"| {pair['pruned_trials_that_would_have_won'] or 'none'} "
            f"| {u['wall_seconds']:.0f} / {p['wall_seconds']:.0f} |")
    lines += [
        "",
        f"All seeds together: pruned / unpruned epochs {p5['epochs_ratio_all_seeds']:.3f}, "
        f"mean best shortfall {100 * p5['mean_best_shortfall']:.2f} %.",
    ]
    for pair in p5["pairs"]:
        lines += [
            "",
            f"Seed {pair['seed']}, every trial (freeze ratio or scratch, learning rate: state, epochs, value or last "
            "reported value):",
            "",
            "| trial | pruner=none | pruner=median |",
            "|---|---|---|",
        ]
        for a, b in zip(pair["unpruned"]["trials"], pair["pruned"]["trials"], strict=False):
            lines.append(f"| {a['number']} | {_trial_cell(a)} | {_trial_cell(b)} |")
    return lines


def markdown(result: dict) -> str:
    """A Markdown summary of the JSON result."""
    m, p, project = result["machine"], result["parameters"], result["project"]
    load = result["load_average_1_5_15"]
    lines = [
        "# Tuning-trial benchmark",
        "",
        f"Machine: {m['usable_cores']} usable cores ({m['cpu_model']}), TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}, Optuna {m['optuna']}, GPUs: {len(m['gpus'])}. Run took "
        f"{result['wall_seconds']:.0f} s. Load average (1 min) at start {load['start'][0]}, "
        f"at end {load['end'][0]}.",
        "",
        f"Project: the embedded digits at {p['image_size']} px, {p['train_per_class']} train / "
        f"{p['val_per_class']} val images per target class, {p['copies']} pre-augmented copies, the "
        f"pipeline's VGG-style CNN pretrained {p['pretrain_epochs']} epochs on the source digits "
        f"(val accuracy {project['pretrain_val_accuracy']}). "
        f"Build seconds per step: {project['step_seconds']}.",
    ]
    for block in result["p1"]:
        lines += markdown_p1(block)
    if result["p5"]:
        lines += markdown_p5(result["p5"])
    lines += ["", f"Overall: {_verdict(result['pass'])}.", ""]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def notes(result: dict) -> list[str]:
    """What the numbers mean, with the reasons for failed rows read off the measurements."""
    out = [
        "Expected ratio (1+2u)/(3u) counts backbone FLOPs only: the head, the optimizer update, tf.data, "
        "Python/Keras dispatch and reading the float16 activations are not in it.",
        "Both P1 arms are tlpipe.tuning.trial.run_trial: the cached arm with the product's "
        "ActivationCache, the full arm with no cache. Both train on the same variant per epoch.",
        "The cache build (the frozen prefix's forward over every training variant and the validation split, "
        "written to a memory-mapped .npy) is paid once per boundary and is left out of the per-epoch ratio.",
        "'incl. val' compares whole epochs (training + validation pass); its expected value is "
        "(N(1+2u) + Nval) / (u(3N + Nval)).",
        "The project is built in a spawned child process, so the measuring process runs with TensorFlow op "
        "determinism off, as the tune step does.",
    ]
    for block in result["p1"]:
        if block["image_size"] != result["parameters"]["image_size"]:
            out.append(f"P1 at {block['image_size']} px uses the same pretrained weights (convolutions + "
                       "global pooling fit any input size) on the digits resized to that size: F grows with "
                       "the pixel count while the per-step overhead does not.")
        floor = block["head_only_floor"]
        for r in (r for r in block["rows"] if not r["pass"]):
            where = f"At {block['image_size']} px, ratio {r['freeze_ratio']}"
            if r["overhead_ceiling"] < P1_TARGET * r["expected_ratio"]:
                out.append(
                    f"{where} fails on fixed per-step cost, not FLOPs: u = {r['u']:.4f}, so the arithmetic "
                    f"expects {r['expected_ratio']:.1f}x, but a cached epoch cannot get much below the "
                    f"head-only floor of {_ms(floor['train_epoch_median'])} ms ({floor['per_step_ms']:.1f} ms per "
                    "step of Keras/tf.data/optimizer overhead), which caps the ratio at about "
                    f"{r['overhead_ceiling']:.1f}x (measured {r['measured_ratio']:.2f}x).")
            else:
                out.append(
                    f"{where} fails ({r['measured_over_expected']:.2f} of expected) although the overhead "
                    f"ceiling ({r['overhead_ceiling']:.1f}x) allows it: costs FLOPs miss (reading wide "
                    "float16 activations, casting them, per-step overhead) are a large share of the cached "
                    "arm's compute.")
    p5 = result["p5"]
    if p5 and p5["trials"] <= 2:
        out.append("P5 ran with 2 or fewer trials per study: the median pruner starts pruning from the third "
                   "trial, so nothing could be pruned (smoke-size run).")
    if p5 and any(p["pruned_trials_that_would_have_won"] for p in p5["pairs"]):
        out.append("'Pruned trials that would have won': trials the median pruner stopped whose twin in "
                   "the unpruned study (same number, same sampled params) finished better than the pruned "
                   "study's best. From the second epoch on (n_warmup_steps=1) the pruner stops a trial "
                   "whose metric is below the median of earlier trials at that epoch, so a trial that starts "
                   "slowly is stopped before it catches up.")
    return out


# ---------------------------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line: output path and the size knobs (`--help` lists them)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_trials", description=__doc__.split("\n")[0])
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
    knobs = ("image_size", "train_per_class", "val_per_class", "copies", "pretrain_epochs", "p1_epochs",
             "p1_repeats", "trials", "trial_epochs")
    result = {
        "benchmark": "tune_trials",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.tune_trials",
                             *(argv or sys.argv[1:])]),
        "machine": {**machine_facts(), "optuna": optuna.__version__},
        "parameters": {k: getattr(args, k) for k in knobs} | {
            "ratios": ratios, "p1_sizes": _ints(args.p1_sizes), "p5_seeds": _ints(args.p5_seeds),
            "p1_statistic": "per trial: median of epochs 2..E, training part only (epoch begin to "
                            "validation start); measured ratio: median over repeats of full / cached "
                            "within a repeat (the two trials run back to back)",
            "flops_are": "2 x MACs for Conv2D/Dense (+ bias), 2 per element for BatchNormalization, 1 "
                         "per input element for pooling, 1 per output element otherwise; forward, per image"},
        "project": project,
        "p1": p1,
        "p5": p5,
        "targets": {"p1_measured_over_expected": P1_TARGET, "p5_epochs_ratio": P5_EPOCHS_TARGET,
                    "p5_best_tolerance": P5_BEST_TOLERANCE},
        "pass": bool(passes) and all(passes),
        "load_average_1_5_15": {"start": [round(v, 2) for v in load_before],
                                "end": [round(v, 2) for v in os.getloadavg()]},
    }
    result["notes"] = notes(result)
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_json(out, result)
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.md')} ({result['wall_seconds']:.0f} s): pass={result['pass']}",
          flush=True)
    return result


if __name__ == "__main__":
    main()
