"""One tuning trial, fast: train only what the trial unfreezes, on activations cached at its freeze boundary.

The frozen prefix of the backbone (BatchNorm in inference mode) maps the same input to the same output every
time, so its output is computed once per (backbone, weights, boundary, data, augmentation) and cached as a
memory-mapped array; a trial then trains the unfrozen suffix + head on it. Per-epoch random augmentation
cannot be cached, so trials use an honest fixed scheme: epoch e trains on variant e mod (K + 1) of the
training set (the original and K pre-augmented copies made once by `augment`). The full-model path uses the
same variants, so both paths compute the same thing; it is the fall-back when the cache would exceed its cap.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlpipe.contracts import COPIES_FILE, HyperParams
from tlpipe.data.datasets import load_split
from tlpipe.models.backbones import FreezePlan, apply_freeze, preprocessing, split_at
from tlpipe.models.training import compile_for, make_head


@dataclass(frozen=True)
class Recipe:
    """What every trial of a study shares: seeds, input size and preprocessing, batch size, epochs."""

    seed: int
    image_size: int
    preprocess: str
    batch_size: int
    epochs: int  # the cap; early stopping on `monitor` with `patience` ends a trial sooner
    patience: int = 3
    monitor: str = "val_accuracy"


@dataclass(frozen=True)
class TrialData:
    """Training variants (V, N, H, W, 3) uint8, their labels, and the validation split."""

    variants: np.ndarray
    labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    classes: list[str]


def load_trial_data(subset: Path, augmented: Path | None, size: int) -> TrialData:
    """The original training split plus the pre-augmented copies, and the validation split."""
    x, y, classes = load_split(subset, "train", size)
    variants = [x]
    if augmented is not None and (Path(augmented) / COPIES_FILE).exists():
        copies = np.load(Path(augmented) / COPIES_FILE)["images"]
        if len(copies):
            if len(copies) % len(x) or copies.shape[1:] != x.shape[1:]:
                raise ValueError(f"{augmented} does not match the training split; rerun augment")
            variants += list(copies.reshape(-1, *x.shape))
    x_val, y_val, _ = load_split(subset, "val", size)
    return TrialData(np.stack(variants), y, x_val, y_val, classes)


def variant_batches(variants: np.ndarray, labels: np.ndarray, batch: int, epochs: int,
                    seed: int) -> tuple[tf.data.Dataset, int]:
    """Epoch e = variant e mod V, shuffled; returns the dataset and steps per epoch."""
    per_variant = []
    for v in range(len(variants)):
        ds = tf.data.Dataset.from_tensor_slices((variants[v], labels))
        ds = ds.shuffle(len(labels), seed=seed + v, reshuffle_each_iteration=True).batch(batch)
        per_variant.append(ds.map(lambda x, y: (tf.cast(x, tf.float32), y)))
    out = per_variant[0]
    for epoch in range(1, epochs):
        out = out.concatenate(per_variant[epoch % len(per_variant)])
    return out.prefetch(tf.data.AUTOTUNE), math.ceil(len(labels) / batch)


class ActivationCache:
    """float16/float32 activations on disk, memory-mapped, under a byte cap."""

    def __init__(self, folder: Path, max_bytes: int, dtype: str):
        self.folder, self.max_bytes, self.dtype = Path(folder), max_bytes, np.dtype(dtype)

    def key(self, identity: str, frozen: int, arrays: list[np.ndarray]) -> str:
        """Cache key: backbone identity + boundary + data (+ augmentation, as the variants) + dtype."""
        digest = hashlib.sha256(f"{identity}|{frozen}|{self.dtype}".encode())
        for arr in arrays:
            digest.update(str(arr.shape).encode())
            digest.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
        return digest.hexdigest()[:20]

    def evict(self, needed: int, keep: str = "") -> int:
        """Delete least-recently-used entries until the folder plus `needed` bytes fits `max_bytes`."""
        entries = [d for d in self.folder.glob("*") if d.is_dir() and d.name != keep] if self.folder.is_dir() else []
        sizes = {d: sum(f.stat().st_size for f in d.glob("*") if f.is_file()) for d in entries}
        own = self.folder / keep
        kept = sum(f.stat().st_size for f in own.glob("*")) if keep and own.is_dir() else 0
        total, removed = sum(sizes.values()) + kept, 0
        for entry in sorted(entries, key=lambda d: d.stat().st_mtime):
            if total + needed <= self.max_bytes:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= sizes[entry]
            removed += 1
        return removed

    def bytes_needed(self, images: int, shape: tuple[int, ...]) -> int:
        """Bytes for `images` activations of `shape`."""
        return images * int(np.prod(shape)) * self.dtype.itemsize

    def get(self, key: str, name: str, model: keras.Model, images: np.ndarray, batch: int = 128) -> np.ndarray:
        """The activations of `model` on `images` (leading dims kept), computed once."""
        path = self.folder / key / f"{name}.npy"
        if not path.exists():
            flat = images.reshape(-1, *images.shape[-3:])
            out_shape = tuple(model.output.shape[1:])
            self.evict(self.bytes_needed(len(flat), out_shape), keep=key)
            path.parent.mkdir(parents=True, exist_ok=True)
            # A unique staging name: two workers computing the same key publish the same bytes atomically.
            staged = path.with_name(f".{name}.{uuid.uuid4().hex[:8]}.partial.npy")
            array = np.lib.format.open_memmap(staged, mode="w+", dtype=self.dtype, shape=(len(flat), *out_shape))
            for start in range(0, len(flat), batch):
                chunk = flat[start : start + batch].astype("float32")
                array[start : start + batch] = np.asarray(model(chunk, training=False)).astype(self.dtype)
            array.flush()
            del array
            staged.replace(path)
        os.utime(path.parent)  # recently used: the last to be evicted
        cached = np.load(path, mmap_mode="r")
        return cached.reshape(*images.shape[:-3], *cached.shape[1:])


def _prefix_model(backbone: keras.Model, frozen: int, size: int, mode: str) -> tuple[keras.Model, keras.Model | None]:
    """(image -> activations at the boundary, boundary -> features); no suffix when all is frozen."""
    if frozen == len(backbone.layers) - 1:
        prefix, suffix = backbone, None
    else:
        prefix, suffix = split_at(backbone, frozen)
    inputs = keras.Input((size, size, 3))
    layer = preprocessing(mode)
    x = layer(inputs) if layer is not None else inputs
    return keras.Model(inputs, prefix(x, training=False)), suffix


def cached_model(backbone: keras.Model, plan: FreezePlan, head: keras.Model, recipe: Recipe,
                 cache: ActivationCache, identity: str,
                 data: TrialData) -> tuple[keras.Model, np.ndarray, np.ndarray] | None:
    """(suffix + head model, train activations, val activations), or None when over the cache cap."""
    prefix_model, suffix = _prefix_model(backbone, plan.frozen, recipe.image_size, recipe.preprocess)
    shape = tuple(prefix_model.output.shape[1:])
    images = data.variants.shape[0] * data.variants.shape[1] + len(data.val_images)
    if cache.bytes_needed(images, shape) > cache.max_bytes:
        return None
    key = cache.key(identity, plan.frozen, [data.variants, data.val_images])
    train = cache.get(key, "train", prefix_model, data.variants)
    val = cache.get(key, "val", prefix_model, data.val_images)
    inputs = keras.Input(shape, name="activations")
    features = suffix(inputs, training=False) if suffix is not None else inputs
    model = keras.Model(inputs, head(features), name="cached_trial")
    return model, train, val


def run_trial(recipe: Recipe, hp: HyperParams, data: TrialData, backbone: keras.Model, head_path: Path | None,
              cache: ActivationCache | None, identity: str, callbacks=()) -> dict:
    """Train one trial; returns history, the freeze plan and whether the cache was used."""
    from tlpipe.models.backbones import build_classifier, regime_plan

    keras.utils.set_random_seed(recipe.seed)
    backbone, plan, train_bn = regime_plan(backbone, hp.regime, hp.freeze_ratio)
    apply_freeze(backbone, plan, train_bn or hp.train_bn)
    warm = head_path if hp.regime != "scratch" else None  # a scratch backbone's features are new: fresh head
    head = make_head(warm, backbone.output.shape[-1], len(data.classes), hp)
    built = None
    if cache is not None and plan.frozen > 0:
        built = cached_model(backbone, plan, head, recipe, cache, identity, data)
        if built is None:
            print(f"tune: activations at {plan.boundary} would exceed tune.cache_max_bytes={cache.max_bytes}; "
                  "this trial trains the full model")
    if built is not None:
        model, train, val = built
        mode = "cached"
    else:
        model = build_classifier(backbone, head, recipe.image_size, recipe.preprocess)
        train, val, mode = data.variants, data.val_images, "full"
    compile_for(model, hp.learning_rate)
    keras.utils.set_random_seed(recipe.seed)
    epochs = recipe.epochs
    dataset, steps = variant_batches(train, data.labels, recipe.batch_size, epochs, recipe.seed)
    val_ds = tf.data.Dataset.from_tensor_slices((np.asarray(val), data.val_labels)).batch(256).map(
        lambda x, y: (tf.cast(x, tf.float32), y))
    # Train to convergence under the epoch cap: stop when the validation metric stops improving.
    stop = keras.callbacks.EarlyStopping(recipe.monitor, patience=recipe.patience, mode="auto")
    history = model.fit(dataset, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps, verbose=0,
                        callbacks=[*callbacks, stop])
    return {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()}, "plan": plan,
            "mode": mode, "model": model}
