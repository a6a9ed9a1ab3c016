"""The per-step cost of a cached trial under Keras compile settings (steps_per_execution, XLA), interleaved."""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.study_cost_report import _load, markdown

OVERHEAD_SETTINGS = {
    "default": {},
    "spe4": {"steps_per_execution": 4},
    "spe16": {"steps_per_execution": 16},
    "jit": {"jit_compile": True},
    "spe16_jit": {"steps_per_execution": 16, "jit_compile": True},
}


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
    recipe = Recipe(seed=42, image_size=size, preprocess="none", batch_size=params.fine_tune.batch_size, epochs=epochs)
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
            names = names[rep % len(names) :] + names[: rep % len(names)]  # rotate the order per repeat
            for name in names:
                keras.utils.set_random_seed(42)
                backbone = load_backbone(spec, "none", size)
                plan = freeze_plan(backbone, ratio)
                apply_freeze(backbone, plan, False)
                hp = HyperParams(
                    freeze_ratio=ratio,
                    learning_rate=1e-3,
                    dropout=params.model.dropout,
                    head_units=params.model.head_units,
                )
                head = make_head(root / "models/head" / HEAD_FILE, backbone.output.shape[-1], len(data.classes), hp)
                built = cached_model(backbone, plan, head, recipe, cache, identity, data)
                assert built is not None, "the activation cache is over its disk budget"
                model, train, val = built
                model.compile(
                    keras.optimizers.Adam(1e-3),
                    loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"],
                    **OVERHEAD_SETTINGS[name],
                )
                ds, steps = variant_batches(train, data.labels, recipe.batch_size, epochs, 42)
                val_ds = ordered_batches(val, data.val_labels)
                timer = Timer()
                timer.train = []
                t0 = time.perf_counter()
                model.fit(
                    ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[timer]
                )
                row = rows.setdefault(
                    f"{ratio}:{name}",
                    {
                        "ratio": ratio,
                        "setting": name,
                        "boundary": plan.boundary,
                        "steps_per_epoch": steps,
                        "epoch_ms": [],
                        "trial_s": [],
                    },
                )
                row["epoch_ms"].append(1000 * statistics.median(timer.train[1:]))
                row["trial_s"].append(time.perf_counter() - t0)
    for row in rows.values():
        base = rows[f"{row['ratio']}:default"]
        row["steady_ms_per_step"] = round(statistics.median(row["epoch_ms"]) / row["steps_per_epoch"], 3)
        for key, src in (("speedup_epoch", "epoch_ms"), ("speedup_trial", "trial_s")):
            pairs = zip(base[src], row[src], strict=True)  # the same repeat: run back to back
            row[key] = round(statistics.median(b / x for b, x in pairs), 3)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["overhead"] = {
        "image_size": size,
        "epochs": epochs,
        "repeats": repeats,
        "load": _load(),
        "rows": list(rows.values()),
    }
    out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    if "rows" in result:
        out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    return result["overhead"]
