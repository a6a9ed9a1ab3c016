"""Part 1 of the tune_trials benchmark: a full-model epoch against a cached-activation epoch per freeze ratio."""

from __future__ import annotations

import gc
import math
import statistics
import time
from pathlib import Path

from benchmarks.tune_trials_report import P1_TARGET


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
    return [
        {"index": i, "name": layer.name, "type": type(layer).__name__, "flops": layer_flops(layer)}
        for i, layer in enumerate(backbone.layers)
    ]


def unfrozen_share(layers: list[dict], frozen: int) -> float:
    """u: the share of the backbone's forward FLOPs in layers frozen+1.. (the part a trial trains)."""
    total = sum(r["flops"] for r in layers)
    return sum(r["flops"] for r in layers[frozen + 1 :]) / total


def expected_ratio(u: float) -> float:
    """Full-model step / cached step per image: (F + 2uF) / (3uF)."""
    return (1 + 2 * u) / (3 * u)


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
        self.recipe = Recipe(
            seed=self.params.seed,
            image_size=size,
            preprocess=preprocess_mode(self.spec),
            batch_size=self.params.fine_tune.batch_size,
            epochs=epochs,
            patience=epochs,
            monitor=cfg.metric,
        )
        self.cache = ActivationCache(root / f"p1_cache_{size}px", cfg.cache_max_bytes, cfg.cache_dtype)
        self.epochs = epochs

    def backbone(self):
        """A fresh copy of the pretrained backbone (the tune Worker loads one per trial too)."""
        from tlpipe.models.backbones import load_backbone

        return load_backbone(self.spec, self.params.model.weights, self.params.model.image_size)

    def hyper(self, ratio: float):
        """fine_tune's hyperparameters at `ratio` (speed does not depend on the learning rate)."""
        from tlpipe.contracts import HyperParams

        return HyperParams(
            freeze_ratio=ratio,
            learning_rate=self.params.fine_tune.learning_rate,
            dropout=self.params.model.dropout,
            head_units=self.params.model.head_units,
        )

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
        out = run_trial(
            self.recipe,
            self.hyper(ratio),
            self.data,
            backbone,
            self.head,
            self.cache if cached else None,
            self.identity,
            callbacks=[clock],
        )
        wall = time.perf_counter() - start
        if out["mode"] != ("cached" if cached else "full"):
            raise SystemExit(f"ratio {ratio}: run_trial ran {out['mode']}, not the arm asked for")
        return {
            "wall_seconds": round(wall, 4),
            "train_epoch_seconds": [round(s, 4) for s in clock.train],
            "val_epoch_seconds": [round(s, 4) for s in clock.val],
            "plan": out["plan"],
        }


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


def p1_row(
    ratio: float,
    layers: list[dict],
    full_runs: list[dict],
    cached_runs: list[dict],
    build: float,
    floor: dict,
    n_train: int,
    n_val: int,
) -> dict:
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
    with_val = [
        (ft + fv) / (ct + cv)
        for (ft, ct), fv, cv in zip(pairs, full["val_epoch_per_repeat"], cached["val_epoch_per_repeat"], strict=True)
    ]
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
        "expected_epoch_ratio_with_val": round((n_train * (1 + 2 * u) + n_val) / (u * (3 * n_train + n_val)), 3),
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
            full, cached = (steady(runs[(ratio, arm)][-1]["train_epoch_seconds"]) for arm in ("full", "cached"))
            print(
                f"P1 {size}px repeat {rep + 1}/{repeats} ratio {ratio}: full {full:.3f} s/epoch, "
                f"cached {cached:.3f} s/epoch",
                flush=True,
            )
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
        "head_only_floor": {
            **floor,
            "cache_build_seconds": round(builds[1.0], 4),
            "per_step_ms": round(1000 * floor["train_epoch_median"] / steps, 3),
        },
        "rows": [
            p1_row(ratio, layers, runs[(ratio, "full")], runs[(ratio, "cached")], builds[ratio], floor, n_train, n_val)
            for ratio in ratios
        ],
    }
