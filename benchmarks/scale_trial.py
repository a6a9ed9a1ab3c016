"""Scale benchmark child: one cached tuning trial and the full-model trial beside it, as `tune` runs them.

`python -m benchmarks.scale_trial --subset data/subset --backbone trial_backbone.keras --cache tune_cache
--report tune_trial.json` (run by `benchmarks.scale` in its own process). The trial data are loaded as a
worker does (`load_trial_data`: in memory within tune's memory budget, else decoded once to scratch .npy files),
the activations at `TRIAL_BOUNDARY` go to the cache (in memory within the budget, else read from the cache's
disk in shuffled blocks), and both trials train the same epochs on the same images, so the epoch-time ratio
is the cache's speed-up at this size. The pre-augmented copies are at the other steps' 32 px, so the 96 px
trial trains on the original training split (one variant).

The report: activation bytes, where they lived (memory / disk / off), every epoch's time of both trials (the
fastest after the first, which traces, is the one compared: the machine is shared),
the speed-up and the FLOPs limit beside it (1 / the unfrozen share of the backbone's forward FLOPs), and the
resident memory the cached trial added (RSS sampled every 20 ms, minus the RSS before it) against the
activation bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.scale import TRIAL_BOUNDARY, TRIAL_SIZE


class RssPeak:
    """The process's resident memory, sampled every 20 ms in a thread; `reset()` starts a new peak."""

    def __init__(self):
        import resource

        self.page = resource.getpagesize()
        self.before = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        """Resident bytes now (/proc/self/statm)."""
        return int(Path("/proc/self/statm").read_text().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def reset(self) -> int:
        """Start a new peak; returns the resident bytes now."""
        self.before = self.peak = self.now()
        return self.peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def epoch_timer():
    """A Keras callback recording each epoch's wall time (training and validation) in `.seconds`."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.start = [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    return EpochTimer()


def input_memory(rss: RssPeak, backbone_file: str, ratio: float, recipe, hp, cache, data) -> int:
    """Resident bytes that loading the cached activations and one full pass of the trial's batches add.

    The activations are on disk from the trial before, so this is the input path alone (no model training):
    one resident copy plus the windows in flight when in memory, only the windows when streamed from disk.
    """
    from tlpipe.models.backbones import apply_freeze, freeze_plan, load_backbone
    from tlpipe.models.training import make_head
    from tlpipe.tuning.batches import variant_batches
    from tlpipe.tuning.trial import cached_model

    backbone = load_backbone(backbone_file, "none", TRIAL_SIZE)
    plan = freeze_plan(backbone, ratio)
    apply_freeze(backbone, plan)
    head = make_head(None, backbone.output.shape[-1], len(data.classes), hp)
    before = rss.reset()
    built = cached_model(backbone, plan, head, recipe, cache, "scale", data)
    assert built is not None, "the activation cache is over its disk budget"
    _, train, _ = built
    batches, _ = variant_batches(train, data.labels, recipe.batch_size, 1, recipe.seed)
    for _ in batches:
        pass
    return rss.peak - before


def main(argv: list[str] | None = None) -> None:
    """CLI: the two trials, then the report as JSON."""
    from benchmarks.tune_trials_cached_epoch import backbone_flops, unfrozen_share
    from tlpipe.contracts import HyperParams
    from tlpipe.models.backbones import load_backbone
    from tlpipe.tuning.cache import DEFAULT_MEMORY_BYTES, ActivationCache, cache_plan
    from tlpipe.tuning.trial import Recipe, load_trial_data, run_trial

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale_trial",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--subset", required=True)
    p.add_argument("--backbone", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--report", required=True, type=Path)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--epochs",
        type=int,
        help="default: 2 to 5, more for small sets (the first traces; the fastest of the others is timed)",
    )
    p.add_argument("--memory-bytes", type=int, default=DEFAULT_MEMORY_BYTES, help="tune.cache_max_bytes")
    args = p.parse_args(argv)

    rss = RssPeak()
    data = load_trial_data(Path(args.subset), None, TRIAL_SIZE, "auto", args.memory_bytes)
    image_delta = rss.peak - rss.before
    backbone = load_backbone(args.backbone, "none", TRIAL_SIZE)
    frozen = [layer.name for layer in backbone.layers].index(TRIAL_BOUNDARY)
    ratio = frozen / (len(backbone.layers) - 1)
    cache = ActivationCache(Path(args.cache), args.memory_bytes, "float16")
    plan = cache_plan(backbone, data.images, "float16")
    print(cache.describe(plan), flush=True)
    u = unfrozen_share(backbone_flops(backbone), frozen)
    epochs = args.epochs or max(2, min(5, math.ceil(20_000 / len(data.labels))))
    recipe = Recipe(
        seed=42, image_size=TRIAL_SIZE, preprocess="none", batch_size=args.batch, epochs=epochs, patience=epochs
    )
    hp = HyperParams(freeze_ratio=ratio, learning_rate=1e-3, dropout=0.3, head_units=64)
    times, peaks, before, modes = {}, {}, {}, {}
    for arm, arm_cache in (("cached", cache), ("full", None)):
        before[arm] = rss.reset()
        timer = epoch_timer()
        out = run_trial(
            recipe,
            hp,
            data,
            load_backbone(args.backbone, "none", TRIAL_SIZE),
            None,
            arm_cache,
            "scale",
            callbacks=[timer],
        )
        if arm == "cached" and out["plan"].boundary != TRIAL_BOUNDARY:
            raise SystemExit(f"ratio {ratio} froze up to {out['plan'].boundary}, not {TRIAL_BOUNDARY}")
        times[arm], peaks[arm], modes[arm] = timer.seconds, rss.peak, out["mode"]
        del out
    input_delta = input_memory(rss, args.backbone, ratio, recipe, hp, cache, data)
    rss.stop()
    needed = plan[TRIAL_BOUNDARY]
    image_bytes = data.images * TRIAL_SIZE * TRIAL_SIZE * 3
    where = ("memory" if cache.in_memory(needed) else "disk") if modes["cached"] == "cached" else "off"
    report = {
        "cache": where,
        "activation_bytes": needed,
        "trial_images": data.images,
        "train_images": len(data.labels),
        "boundary": TRIAL_BOUNDARY,
        "image_size": TRIAL_SIZE,
        "img_per_s": round(len(data.labels) / min(times["cached"][1:]), 1),
        "cached_epoch_s": [round(t, 2) for t in times["cached"]],
        "full_epoch_s": [round(t, 2) for t in times["full"]],
        "speedup_vs_full": round(min(times["full"][1:]) / min(times["cached"][1:]), 3),
        "unfrozen_flop_share": round(u, 4),
        "flops_limit": round(1 / u, 3),
        "rss_before_cached_mb": round(before["cached"] / 2**20, 1),
        "cached_rss_delta_mb": round((peaks["cached"] - before["cached"]) / 2**20, 1),
        "cached_rss_delta_per_activation_byte": round((peaks["cached"] - before["cached"]) / needed, 3),
        "trial_images_in": "memory" if isinstance(data.variants[0], np.ndarray) else "disk",
        "images_rss_delta_mb": round(image_delta / 2**20, 1),
        "images_rss_delta_per_byte": round(image_delta / image_bytes, 3),
        "input_rss_delta_mb": round(input_delta / 2**20, 1),
        "input_rss_delta_per_activation_byte": round(input_delta / needed, 3),
        "memory_budget": args.memory_bytes,
        "cache_disk_budget": cache.disk_bytes,
    }
    report["speedup_of_limit"] = round(report["speedup_vs_full"] / report["flops_limit"], 3)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
