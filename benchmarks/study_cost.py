"""Study cost: a whole tlpipe `tune` study against the naive way, side by side, at two input sizes.

Naive arm (a competent user following the Keras and Optuna tutorials): Optuna with the same sampler, seed,
search space, trial budget and pruner (`optuna_integration.KerasPruningCallback` on the same metric), Keras
`EarlyStopping` with tlpipe's patience; every trial builds the full Keras model (the same backbone, warm head
and freeze helpers as tlpipe) and reads the image files every epoch through `tf_keras`
`ImageDataGenerator.flow_from_directory` with per-epoch augmentation (augment's settings), as the seeds do.
What it lacks is only tlpipe's machinery: the activation cache and the in-memory input pipeline.
tlpipe arm: the real `tune` step (`pipelines.local.run_steps`, as dvc.yaml runs it) with
its defaults (cache, pruning, early stopping, MLflow runs per trial) from a cold activation cache. Both
arms are restricted to the transfer regime without the train_bn choice (the naive arm cannot do scratch),
the same freeze-ratio and learning-rate ranges, and `tune.epochs` as the epoch cap. The post-study sweep
is off (it is a report, not part of the study).

Each arm runs in its own child process; per (size, seed) the two run back to back, the order alternating,
so load from other processes falls on both. Then one child per size fine-tunes the best params of every
run with the same code (`components.fine_tune.fine_tune`) and scores the test split.

    python -m benchmarks.study_cost --sizes 32 96 --seeds 42 43 44 --trials 8
    python -m benchmarks.study_cost overhead --root DIR    # per-step cost of a cached trial (Keras settings)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = ["make_digits", "make_subset", "validate_data", "augment", "pretrain_backbone", "extract_features",
            "train_head"]
RATIO_GOAL = 0.5  # issue 22: median ratio <= 0.5 at >= 96 px against a naive arm that stops early and prunes


def machine() -> dict:
    """Cores, CPU model and library versions."""
    import keras
    import optuna
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "optuna": optuna.__version__}


def write_params(root: Path, seed: int, size: int, trials: int, storage: Path | None = None,
                 overrides: dict | None = None) -> Path:
    """params.yaml of the benchmark project (committed params + size, transfer-only search, no sweep)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["seed"] = seed
    params["make_digits"]["image_size"] = params["model"]["image_size"] = size
    params["tracking"]["default_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    params["tune"].update(n_trials=trials, regimes=["transfer"], search_bn=False, sweep=False, warm_start=0,
                          storage=f"sqlite:///{storage or root / 'optuna.db'}")
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        params[section][name] = value
    path = (storage.parent if storage else root) / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def child_env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "GX_ANALYTICS_ENABLED": "false",
           "TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_child(args: list[str], log: Path, module: str = "benchmarks.study_cost") -> None:
    """`python -m MODULE ARGS` in its own process (fresh TensorFlow state)."""
    with open(log, "a", encoding="utf-8") as out:
        code = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=child_env(),
                              stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"{' '.join(args)} failed ({code}); see {log}:\n{log.read_text()[-3000:]}")


def study_facts(study, started: dt.datetime) -> dict:
    """Best value, when it was reached, states and epochs of a finished study."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    best = study.best_trial
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {"best": best.value, "best_trial": best.number,
            "to_best_s": (best.datetime_complete - started).total_seconds(),
            "params": {"freeze_ratio": best.user_attrs["freeze_ratio"],
                       "learning_rate": best.params["learning_rate"]},
            "states": states, "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
            "trial_s_sum": round(sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials), 2),
            "trials": [{"n": t.number, "state": t.state.name, "value": t.value,
                        "freeze_ratio": t.user_attrs.get("freeze_ratio"), "lr": t.params.get("learning_rate"),
                        "epochs": t.user_attrs.get("epochs_run")} for t in trials]}


def preimport() -> None:
    """The libraries both arms load, imported before either clock starts (process start-up is not the study)."""
    import keras  # noqa: F401
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import optuna_integration  # noqa: F401
    import tensorflow  # noqa: F401
    import tf_keras.preprocessing.image  # noqa: F401

    import components.tune  # noqa: F401
    import tlpipe.models.backbones  # noqa: F401
    import tlpipe.tuning.worker  # noqa: F401


def arm_tlpipe(root: Path, seed: int, size: int, trials: int, out: Path, extra: dict) -> None:
    """The real tune step, cold activation cache, its own Optuna storage."""
    import optuna

    from pipelines.local import run_steps

    preimport()

    run = out.parent
    shutil.rmtree(run, ignore_errors=True)
    params = write_params(root, seed, size, trials, storage=run / "optuna.db", overrides=extra)
    shutil.rmtree(root / "checkpoints" / "tune_cache", ignore_errors=True)
    started, t0 = dt.datetime.now(), time.perf_counter()
    run_steps(root, ["tune"], params)
    seconds = time.perf_counter() - t0
    best = json.loads((root / "reports" / "tune" / "best_params.json").read_text())
    study = optuna.load_study(study_name=best["study_name"], storage=f"sqlite:///{run / 'optuna.db'}")
    facts = study_facts(study, started)
    modes = {}
    for t in study.get_trials(deepcopy=False):
        modes[t.user_attrs.get("mode", "pruned")] = modes.get(t.user_attrs.get("mode", "pruned"), 0) + 1
    out.write_text(json.dumps({"arm": "tlpipe", "seed": seed, "size": size, "seconds": seconds, **facts, "modes": modes,
                               "best_params": best["params"]}, indent=1))


def image_folders(subset: Path, out: Path) -> Path:
    """The subset's images as the naive user keeps them, <split>/<class>/<file> (written once, not timed)."""
    from tlpipe.contracts import SHARDS_DIR
    from tlpipe.data.records import records

    if not out.is_dir():
        staged = out.with_name(out.name + ".partial")
        shutil.rmtree(staged, ignore_errors=True)
        for rel, data in records(sorted((subset / SHARDS_DIR).glob("*.tfrecord"))):
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            (staged / rel).write_bytes(data)
        staged.replace(out)
    return out


def naive_model(backbone, plan, head, size, preprocess, lr):
    from tlpipe.models.backbones import apply_freeze, build_classifier
    from tlpipe.models.training import compile_for

    apply_freeze(backbone, plan, False)
    return compile_for(build_classifier(backbone, head, size, preprocess), lr)


class DirectoryData:
    """tf_keras's DirectoryIterator as a Keras 3 PyDataset (Keras 3 does not take tf_keras Sequences)."""

    @staticmethod
    def make(folder: Path, size: int, batch: int, seed: int, augment=None, shuffle: bool = True):
        import keras
        from tf_keras.preprocessing.image import ImageDataGenerator

        gen = ImageDataGenerator(
            rotation_range=augment.rotation_degrees, zoom_range=augment.zoom, width_shift_range=augment.width_shift,
            height_shift_range=augment.height_shift, horizontal_flip=augment.horizontal_flip,
            fill_mode="nearest") if augment else ImageDataGenerator()
        it = gen.flow_from_directory(str(folder), target_size=(size, size), color_mode="rgb", class_mode="sparse",
                                     batch_size=batch, shuffle=shuffle, seed=seed)

        class Wrapped(keras.utils.PyDataset):
            def __len__(self):
                return len(it)

            def __getitem__(self, i):
                return it[i]

            def on_epoch_end(self):
                it.on_epoch_end()

        return Wrapped(), it.class_indices


def arm_naive(root: Path, seed: int, size: int, trials: int, out: Path, extra: dict) -> None:
    """Optuna + full model + ImageDataGenerator from the files every epoch, with early stopping and the pruner."""
    import keras
    import optuna
    from optuna_integration import KerasPruningCallback

    from components.tune import Context

    preimport()
    from tlpipe.config import load_params
    from tlpipe.contracts import HyperParams
    from tlpipe.data.datasets import class_names, read_manifest
    from tlpipe.models.backbones import freeze_plan
    from tlpipe.models.training import make_head
    from tlpipe.tuning.study import freeze_points, pruner, sampler, suggest

    params = load_params(write_params(root, seed, size, trials, storage=out.parent / "unused.db", overrides=extra))
    ctx = Context(params, argparse.Namespace(subset=str(root / "data/subset"), augmented=str(root / "data/augmented"),
                                             head=str(root / "models/head"), backbone=str(root / "models/backbone")))
    cfg, batch = params.tune, params.fine_tune.batch_size
    points = freeze_points(ctx.load_backbone())
    class_order = class_names(read_manifest(root / "data/subset"))
    folders = image_folders(root / "data/subset", root / "data/naive")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        hp = HyperParams(dropout=params.model.dropout, head_units=params.model.head_units,
                         **suggest(trial, cfg, points, ["transfer"]))
        keras.utils.set_random_seed(seed)
        backbone = ctx.load_backbone()
        plan = freeze_plan(backbone, hp.freeze_ratio)
        train, classes = DirectoryData.make(folders / "train", size, batch, seed, params.augment)
        val, _ = DirectoryData.make(folders / "val", size, 256, seed, shuffle=False)
        if sorted(classes, key=classes.get) != class_order:
            raise SystemExit(f"class order {classes} differs from the manifest's {class_order}")
        head = make_head(ctx.head, backbone.output.shape[-1], len(classes), hp)
        model = naive_model(backbone, plan, head, size, ctx.recipe.preprocess, hp.learning_rate)
        epochs_run = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: trial.set_user_attr("epochs_run", epoch + 1))
        stop = keras.callbacks.EarlyStopping(cfg.metric, patience=cfg.patience)
        history = model.fit(train, validation_data=val, epochs=cfg.epochs, verbose=0,
                            callbacks=[epochs_run, stop, KerasPruningCallback(trial, cfg.metric)])
        return min(history.history[cfg.metric])

    started, t0 = dt.datetime.now(), time.perf_counter()
    study = optuna.create_study(direction="minimize", sampler=sampler(cfg, seed), pruner=pruner(cfg))
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - t0
    facts = study_facts(study, started)
    out.write_text(json.dumps({"arm": "naive", "seed": seed, "size": size, "seconds": seconds, **facts,
                               "early_stopping": True, "patience": cfg.patience, "pruner": cfg.pruner,
                               "best_params": {**facts["params"], "regime": "transfer", "train_bn": False,
                                               "dropout": params.model.dropout,
                                               "head_units": params.model.head_units}}, indent=1))


def fine_tune_test(root: Path, params, hp, workdir: Path) -> dict:
    """Train the final model with `hp` by fine_tune's own code; its accuracy on the test split."""
    import numpy as np

    from components.fine_tune import fine_tune
    from tlpipe.contracts import HEAD_FILE
    from tlpipe.data.datasets import load_split
    from tlpipe.models.backbones import backbone_identity, load_backbone, preprocess_mode
    from tlpipe.models.fitting import Training

    size, spec = params.model.image_size, str(root / "models/backbone")
    t0 = time.perf_counter()
    run = Training.from_params(params, params.fine_tune, hp=hp, preprocess=preprocess_mode(spec),
                               load=lambda: load_backbone(spec, "none", size),
                               head_path=root / "models/head" / HEAD_FILE)
    model, info = fine_tune(run, identity=backbone_identity(spec, "none", size), subset=root / "data/subset",
                            workdir=workdir)
    x, y, _ = load_split(root / "data/subset", "test", size)
    pred = np.argmax(model.predict(x, verbose=0), axis=1)
    shutil.rmtree(info["job_dir"], ignore_errors=True)
    return {"test_accuracy": float(np.mean(pred == y)), "test_images": len(y),
            "fine_tune_best_epoch": info["best_epoch"], "fine_tune_s": round(time.perf_counter() - t0, 1)}


def final_tests(root: Path, size: int, trials: int, runs: list[Path], extra: dict) -> None:
    """Fine-tune every run's best params (same code for both arms); test accuracy into each run's json."""
    from tlpipe.config import load_params
    from tlpipe.contracts import HyperParams

    done: dict[str, dict] = {}
    for path in runs:
        run = json.loads(path.read_text())
        params = load_params(write_params(root, run["seed"], size, trials, storage=path.parent / "final.db",
                                          overrides=extra))
        hp = HyperParams(**run["best_params"])
        key = json.dumps([run["seed"], hp.model_dump()], sort_keys=True)
        if key not in done:
            done[key] = fine_tune_test(root, params, hp, path.parent / "fine_tune_work")
        run.update(done[key])
        path.write_text(json.dumps(run, indent=1))


OVERHEAD_SETTINGS = {"default": {}, "spe4": {"steps_per_execution": 4}, "spe16": {"steps_per_execution": 16},
                     "jit": {"jit_compile": True}, "spe16_jit": {"steps_per_execution": 16, "jit_compile": True}}


def step_overhead(root: Path, size: int, out: Path, ratios=(0.5, 0.9), repeats: int = 3, epochs: int = 5) -> dict:
    """Per-step cost of a cached trial under Keras compile settings, interleaved; merged into `out`'s json."""
    import statistics

    import keras

    from tlpipe.config import load_params
    from tlpipe.contracts import HEAD_FILE, HyperParams
    from tlpipe.models.backbones import apply_freeze, backbone_identity, freeze_plan, load_backbone
    from tlpipe.models.training import make_head
    from tlpipe.tuning.trial import (
        ActivationCache,
        Recipe,
        cached_model,
        load_trial_data,
        ordered_batches,
        variant_batches,
    )

    params = load_params(root / "params.yaml")
    spec = str(root / "models/backbone")
    data = load_trial_data(root / "data/subset", root / "data/augmented", size)
    recipe = Recipe(seed=42, image_size=size, preprocess="none", batch_size=params.fine_tune.batch_size,
                    epochs=epochs)
    cache = ActivationCache(root / "checkpoints/overhead_cache", 2**31, "float16")
    identity = backbone_identity(spec, "none", size)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.train.append(time.perf_counter() - self.t)

    rows: dict[str, dict] = {}
    for ratio in ratios:
        for rep in range(repeats):
            names = list(OVERHEAD_SETTINGS)
            names = names[rep % len(names):] + names[:rep % len(names)]  # rotate the order per repeat
            for name in names:
                keras.utils.set_random_seed(42)
                backbone = load_backbone(spec, "none", size)
                plan = freeze_plan(backbone, ratio)
                apply_freeze(backbone, plan, False)
                hp = HyperParams(freeze_ratio=ratio, learning_rate=1e-3, dropout=params.model.dropout,
                                 head_units=params.model.head_units)
                head = make_head(root / "models/head" / HEAD_FILE, backbone.output.shape[-1], len(data.classes), hp)
                model, train, val = cached_model(backbone, plan, head, recipe, cache, identity, data)
                model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                              metrics=["accuracy"], **OVERHEAD_SETTINGS[name])
                ds, steps = variant_batches(train, data.labels, recipe.batch_size, epochs, 42)
                val_ds = ordered_batches(val, data.val_labels)
                timer = Timer()
                timer.train = []
                t0 = time.perf_counter()
                model.fit(ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps, verbose=0,
                          callbacks=[timer])
                row = rows.setdefault(f"{ratio}:{name}", {"ratio": ratio, "setting": name, "boundary": plan.boundary,
                                                          "steps_per_epoch": steps, "epoch_ms": [], "trial_s": []})
                row["epoch_ms"].append(1000 * statistics.median(timer.train[1:]))
                row["trial_s"].append(time.perf_counter() - t0)
    for row in rows.values():
        base = rows[f"{row['ratio']}:default"]
        row["steady_ms_per_step"] = round(statistics.median(row["epoch_ms"]) / row["steps_per_epoch"], 3)
        for key, src in (("speedup_epoch", "epoch_ms"), ("speedup_trial", "trial_s")):
            pairs = zip(base[src], row[src], strict=True)  # the same repeat: run back to back
            row[key] = round(statistics.median(b / x for b, x in pairs), 3)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["overhead"] = {"image_size": size, "epochs": epochs, "repeats": repeats, "load": _load(),
                          "rows": list(rows.values())}
    out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    if "rows" in result:
        out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    return result["overhead"]


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def summarize_rows(runs: dict[tuple[int, int, str], dict]) -> list[dict]:
    """One row per (size, seed) from the two arms' run files."""
    rows = []
    for size, seed in sorted({(k[0], k[1]) for k in runs}):
        naive, tl = runs[(size, seed, "naive")], runs[(size, seed, "tlpipe")]
        n_test = naive.get("test_images") or 1
        rows.append({
            "image_size": size, "seed": seed, "naive_s": round(naive["seconds"], 1),
            "tlpipe_s": round(tl["seconds"], 1), "ratio": round(tl["seconds"] / naive["seconds"], 3),
            "naive_to_best_s": round(naive["to_best_s"], 1), "tlpipe_to_best_s": round(tl["to_best_s"], 1),
            "naive_best": round(naive["best"], 4), "tlpipe_best": round(tl["best"], 4),
            "naive_test": naive.get("test_accuracy"), "tlpipe_test": tl.get("test_accuracy"),
            "test_images": n_test, "naive_early_stopping": naive.get("early_stopping", False),
            "naive_pruner": naive.get("pruner", "none"), "naive_states": naive["states"], "tlpipe_states": tl["states"],
            "naive_epochs": naive["epochs"], "tlpipe_epochs": tl["epochs"], "tlpipe_modes": tl.get("modes"),
            "naive_params": naive["params"], "tlpipe_params": tl["params"], "order": naive.get("order"),
            "load_before": naive.get("load_before"),
            "ratio_ok": tl["seconds"] / naive["seconds"] <= RATIO_GOAL,
            "test_ok": (tl.get("test_accuracy") is not None and naive.get("test_accuracy") is not None
                        and tl["test_accuracy"] >= naive["test_accuracy"] - 1.0 / n_test - 1e-9)})
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Study cost: tlpipe `tune` vs the naive way", "",
             f"{m['cores']} cores ({m['cpu']}), TensorFlow {m['tensorflow']}, Keras {m['keras']}, Optuna "
             f"{m['optuna']}. Load average (1/5/15 min) at start {result['load']['start']}, at end "
             f"{result['load']['end']}. {result['parameters']['trials']} trials per study, epoch cap "
             f"{result['parameters']['epochs']}, transfer regime only. Naive arm: Keras EarlyStopping (same patience) "
             f"and the same Optuna pruner ({', '.join(sorted({r['naive_pruner'] for r in result['rows']}))}) through "
             f"KerasPruningCallback. Run took {result['wall_s']:.0f} s.", "",
             f"| px | seed | naive s | tlpipe s | ratio (<= {RATIO_GOAL}) | to best s naive / tlpipe | "
             "best val_loss naive / tlpipe | test acc naive / tlpipe | tlpipe states | epochs naive / tlpipe | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        test = (f"{r['naive_test']:.3f} / {r['tlpipe_test']:.3f} {'ok' if r['test_ok'] else '**short**'}"
                if r["naive_test"] is not None and r["tlpipe_test"] is not None else "-")
        lines.append(f"| {r['image_size']} | {r['seed']} | {r['naive_s']:.0f} | {r['tlpipe_s']:.0f} | "
                     f"{r['ratio']:.3f} {'PASS' if r['ratio_ok'] else '**FAIL**'} | {r['naive_to_best_s']:.0f} / "
                     f"{r['tlpipe_to_best_s']:.0f} | {r['naive_best']:.4f} / {r['tlpipe_best']:.4f} | {test} | "
                     f"{r['tlpipe_states']} | {r['naive_epochs']} / {r['tlpipe_epochs']} | {r['load_before']} |")
    if "overhead" in result:
        o = result["overhead"]
        lines += ["", f"## Per-step overhead of a cached trial ({o['image_size']} px, {o['epochs']} epochs, "
                      f"{o['repeats']} interleaved repeats, load {o['load']})", "",
                  "| freeze ratio (boundary) | setting | steady ms/step | epoch speed-up | whole-trial speed-up |",
                  "|---|---|---|---|---|"]
        for r in o["rows"]:
            lines.append(f"| {r['ratio']} ({r['boundary']}) | {r['setting']} | {r['steady_ms_per_step']:.2f} | "
                         f"{r['speedup_epoch']:.2f}x | {r['speedup_trial']:.2f}x |")
    lines += ["", *[f"- {n}" for n in result.get("notes", [])]]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="bench",
                   choices=("bench", "build", "naive", "tlpipe", "final", "overhead"))
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--seeds-per-size", type=int, nargs="+",
                   help="how many of --seeds each size runs (default: all), e.g. 3 1 when time is short")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--work", type=Path, help="keep the projects here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/study_cost.json")
    p.add_argument("--no-final", action="store_true", help="skip the final fine-tunes")
    p.add_argument("--set", action="append", default=[], help="params override section.key=value (smoke tests)")
    p.add_argument("--repeats", type=int, default=3, help="overhead: interleaved repeats")
    p.add_argument("--epochs", type=int, default=5, help="overhead: epochs per trial")
    # child arguments
    p.add_argument("--root", type=Path)
    p.add_argument("--size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--run", type=Path, nargs="*")
    return p.parse_args(argv)


def overrides(pairs: list[str]) -> dict:
    return {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in pairs)}


def bench(args: argparse.Namespace) -> dict:
    import tempfile

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="tlpipe-study-cost-"))
    load_start = _load()
    extra = [x for pair in args.set for x in ("--set", pair)]
    runs: dict[tuple[int, int, str], dict] = {}
    build_s = {}
    for size in args.sizes:
        root = work / f"px{size}"
        if not (root / "models/head").is_dir():
            root.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            run_child(["build", "--root", str(root), "--size", str(size), "--trials", str(args.trials), *extra],
                      work / "log.txt")
            build_s[size] = round(time.perf_counter() - t0, 1)
        count = (args.seeds_per_size or [len(args.seeds)] * len(args.sizes))[args.sizes.index(size)]
        seeds = args.seeds[:count]
        for i, seed in enumerate(seeds):
            order = ("naive", "tlpipe") if (i + args.sizes.index(size)) % 2 == 0 else ("tlpipe", "naive")
            load = _load()
            for arm in order:
                out = work / "runs" / f"px{size}-seed{seed}-{arm}" / "run.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                run_child([arm, "--root", str(root), "--size", str(size), "--seed", str(seed), "--trials",
                           str(args.trials), "--run", str(out), *extra], work / "log.txt")
                run = json.loads(out.read_text())
                run.update(order=list(order), load_before=load)
                out.write_text(json.dumps(run, indent=1))
                runs[(size, seed, arm)] = run
                print(f"px {size} seed {seed} {arm}: {run['seconds']:.1f} s, best {run['best']:.4f}, "
                      f"{run['states']}, load {_load()}", flush=True)
        if not args.no_final:
            files = [work / "runs" / f"px{size}-seed{s}-{a}" / "run.json" for s in seeds for a in ("naive", "tlpipe")]
            run_child(["final", "--root", str(root), "--size", str(size), "--trials", str(args.trials),
                       "--run", *map(str, files), *extra], work / "log.txt")
            for s in seeds:
                for a in ("naive", "tlpipe"):
                    runs[(size, s, a)] = json.loads((work / "runs" / f"px{size}-seed{s}-{a}" / "run.json").read_text())
    result = {"rows": summarize_rows(runs), "machine": machine(), "load": {"start": load_start, "end": _load()},
              "parameters": {"sizes": args.sizes, "seeds": args.seeds, "seeds_per_size": args.seeds_per_size,
                             "trials": args.trials,
                             "epochs": yaml.safe_load((REPO / "params.yaml").read_text())["tune"]["epochs"],
                             "overrides": args.set, "build_s": build_s},
              "runs": {f"px{k[0]}-seed{k[1]}-{k[2]}": v for k, v in runs.items()},
              "work": str(work), "wall_s": round(time.perf_counter() - started, 1)}
    result["goal"] = {"ratio_le": RATIO_GOAL, "test_within_images": 1}
    result["pass"] = all(r["ratio_ok"] and r["test_ok"] for r in result["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {args.out} ({result['wall_s']:.0f} s): pass={result['pass']}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    extra = overrides(args.set)
    if args.command == "bench":
        return bench(args)
    if args.command == "build":
        from pipelines.local import run_steps

        run_steps(args.root, UPSTREAM, write_params(args.root, 42, args.size, args.trials, overrides=extra))
    elif args.command in ("naive", "tlpipe"):
        (arm_naive if args.command == "naive" else arm_tlpipe)(args.root, args.seed, args.size, args.trials,
                                                                args.run[0], extra)
    elif args.command == "final":
        final_tests(args.root, args.size, args.trials, args.run, extra)
    elif args.command == "overhead":
        step_overhead(args.root, args.size, args.out, repeats=args.repeats, epochs=args.epochs)
    return None


if __name__ == "__main__":
    main()
