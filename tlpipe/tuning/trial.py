"""One tuning trial, fast: train only what the trial unfreezes, on activations cached at its freeze boundary.

The frozen prefix of the backbone (BatchNorm in inference mode) maps the same input to the same output every
time, so its output is computed once per (backbone, weights, boundary, data, augmentation) and cached as a
.npy file on disk; a trial then trains the unfrozen suffix + head on it. Per-epoch random augmentation
cannot be cached, so trials use an honest fixed scheme: epoch e trains on variant e mod (K + 1) of the
training set (the original and K pre-augmented copies made once by `augment`). The full-model path uses the
same variants, so both paths compute the same thing; it is the fall-back when the cache would exceed its cap.

Small sets are held in memory; large ones (tlpipe.data.datasets.IN_MEMORY_MAX_IMAGES) are decoded once to
scratch .npy files and, like the activations, read back a batch at a time, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
import weakref
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlpipe.cli import scratch_dir
from tlpipe.contracts import COPIES_FILE, HyperParams
from tlpipe.data import datasets
from tlpipe.data.arrays import NpyRows, NpyWriter
from tlpipe.data.datasets import decode_images, decoded_chunks, read_manifest, split_images
from tlpipe.errors import DataError
from tlpipe.models.backbones import FreezePlan, apply_freeze, preprocessing, split_at
from tlpipe.models.training import compile_for, make_head
from tlpipe.tracking.lineage import content_hash


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
    """Training variants (each N x H x W x 3 uint8), their labels, the validation split, and their identity.

    Each image array is in memory (np.ndarray) for small sets, or rows of a .npy file on disk (NpyRows) read
    in batches, so a trial's memory does not grow with the dataset (`load_trial_data` decides by size).
    """

    variants: list
    labels: np.ndarray
    val_images: np.ndarray | NpyRows
    val_labels: np.ndarray
    classes: list[str]
    fingerprint: str = ""  # the images' identity: subset contents, image size and the augmented copies


def _fingerprint(subset: Path, size: int, copies: Path | None) -> str:
    """What the trial images are, cheaply: the manifest's image hashes per split, the size, the copies' bytes."""
    manifest = read_manifest(subset, ["split", "sha256"])
    digest = hashlib.sha256(f"{size}|".encode())
    for split in ("train", "val"):
        digest.update("|".join(manifest.loc[manifest["split"] == split, "sha256"]).encode())
    digest.update(content_hash(copies).encode() if copies is not None else b"")
    return digest.hexdigest()[:20]


def load_trial_data(subset: Path, augmented: Path | None, size: int, mode: str = "auto") -> TrialData:
    """The original training split plus the pre-augmented copies, and the validation split.

    `mode`: "memory", "stream" (decoded once to scratch .npy files, read back in batches) or "auto" (memory
    up to IN_MEMORY_MAX_IMAGES images over all variants and the validation split).
    """
    train, labels, classes = split_images(subset, "train")
    val, val_labels, _ = split_images(subset, "val")
    path = Path(augmented) / COPIES_FILE if augmented is not None else None
    copies = NpyRows(path) if path is not None and path.exists() else None
    if copies is not None and not len(copies):
        copies = None
    if copies is not None and (len(copies) % len(train) or copies.row_shape != (size, size, 3)):
        raise DataError(f"{path}: {copies.shape} does not match the {len(train)} training images at {size} px; "
                        "rerun augment")
    k = len(copies) // len(train) if copies is not None else 0
    fingerprint = _fingerprint(subset, size, path if copies is not None else None)
    total = len(train) * (k + 1) + len(val)
    if mode == "memory" or (mode == "auto" and total <= datasets.IN_MEMORY_MAX_IMAGES):
        x = decode_images(train, size, desc="decode train")
        extra = list(copies.load().reshape(k, *x.shape)) if copies is not None else []
        return TrialData([x, *extra], labels, decode_images(val, size, desc="decode val"), val_labels, classes,
                         fingerprint)
    stack = ExitStack()
    folder = stack.enter_context(scratch_dir("trial-data"))
    for name, images in (("train", train), ("val", val)):
        NpyWriter.write(folder / f"{name}.npy", decoded_chunks(images, size, desc=f"decode {name}"),
                        (len(images), size, size, 3), np.uint8)
    variants = [NpyRows(folder / "train.npy"), *(NpyRows(path, i * len(train), len(train)) for i in range(k))]
    data = TrialData(variants, labels, NpyRows(folder / "val.npy"), val_labels, classes, fingerprint)
    weakref.finalize(data, stack.close)  # the scratch files go with the data
    return data


def _float(x, y):
    return tf.cast(x, tf.float32), y


def variant_batches(variants: list, labels: np.ndarray, batch: int, epochs: int,
                    seed: int) -> tuple[tf.data.Dataset, int]:
    """Epoch e = variant e mod V, shuffled; returns the dataset and steps per epoch."""
    steps = math.ceil(len(labels) / batch)
    if all(isinstance(v, np.ndarray) for v in variants):
        per_variant = []
        for v in range(len(variants)):
            ds = tf.data.Dataset.from_tensor_slices((variants[v], labels))
            ds = ds.shuffle(len(labels), seed=seed + v, reshuffle_each_iteration=True).batch(batch)
            per_variant.append(ds.map(_float))
        out = per_variant[0]
        for epoch in range(1, epochs):
            out = out.concatenate(per_variant[epoch % len(per_variant)])
        return out.prefetch(tf.data.AUTOTUNE), steps

    def generate():  # from disk: a seeded permutation per epoch, each batch read with positioned reads
        for epoch in range(epochs):
            rows = variants[epoch % len(variants)]
            order = np.random.default_rng([seed, epoch]).permutation(len(labels))
            for start in range(0, len(order), batch):
                index = order[start : start + batch]
                yield _read(rows, index), labels[index]

    first = variants[0]
    spec = (tf.TensorSpec((None, *first.shape[1:]), tf.as_dtype(first.dtype)),
            tf.TensorSpec((None,), tf.as_dtype(labels.dtype)))
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    return ds.map(_float).prefetch(tf.data.AUTOTUNE), steps


def _read(rows, index: np.ndarray) -> np.ndarray:
    return rows[index] if isinstance(rows, np.ndarray) else rows.read(index)


def ordered_batches(images, labels: np.ndarray, batch: int = 256) -> tf.data.Dataset:
    """(float32 images, labels) in order: the validation set, from memory or from disk."""
    if isinstance(images, np.ndarray):
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).map(_float)

    def generate():
        for start, chunk in zip(range(0, len(labels), batch), images.chunks(batch), strict=True):
            yield chunk, labels[start : start + len(chunk)]

    spec = (tf.TensorSpec((None, *images.shape[1:]), tf.as_dtype(images.dtype)),
            tf.TensorSpec((None,), tf.as_dtype(labels.dtype)))
    return tf.data.Dataset.from_generator(generate, output_signature=spec).map(_float).prefetch(2)


class ActivationCache:
    """float16/float32 activations on disk under a byte cap, least recently used evicted first."""

    def __init__(self, folder: Path, max_bytes: int, dtype: str):
        self.folder, self.max_bytes, self.dtype = Path(folder), max_bytes, np.dtype(dtype)

    def key(self, identity: str, frozen: int, fingerprint: str) -> str:
        """Cache key: backbone identity + boundary + the images' fingerprint (augmentation included) + dtype."""
        return hashlib.sha256(f"{identity}|{frozen}|{self.dtype}|{fingerprint}".encode()).hexdigest()[:20]

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

    def get(self, key: str, name: str, model: keras.Model, parts: list, batch: int = 128) -> list:
        """The activations of `model` on each image array of `parts`, computed once and stored as one .npy.

        Returns one array per part: in memory when every part was in memory, else NpyRows on disk.
        """
        path = self.folder / key / f"{name}.npy"
        if not path.exists():
            out_shape = tuple(model.output.shape[1:])
            total = sum(len(p) for p in parts)
            self.evict(self.bytes_needed(total, out_shape), keep=key)
            path.parent.mkdir(parents=True, exist_ok=True)

            def chunks():
                for part in parts:
                    blocks = ((part[i : i + batch] for i in range(0, len(part), batch))
                              if isinstance(part, np.ndarray) else part.chunks(batch))
                    for block in blocks:
                        yield np.asarray(model(block.astype("float32"), training=False)).astype(self.dtype)

            # A unique staging name: two workers computing the same key publish the same bytes atomically.
            staged = path.with_name(f".{name}.{uuid.uuid4().hex[:8]}.npy")
            NpyWriter.write(staged, chunks(), (total, *out_shape), self.dtype)
            staged.replace(path)
        os.utime(path.parent)  # recently used: the last to be evicted
        out, start = [], 0
        for part in parts:
            rows = NpyRows(path, start, len(part))
            out.append(rows.load() if isinstance(part, np.ndarray) else rows)
            start += len(part)
        return out


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
                 cache: ActivationCache, identity: str, data: TrialData) -> tuple[keras.Model, list, object] | None:
    """(suffix + head model, train activations per variant, val activations), or None when over the cache cap."""
    prefix_model, suffix = _prefix_model(backbone, plan.frozen, recipe.image_size, recipe.preprocess)
    shape = tuple(prefix_model.output.shape[1:])
    images = sum(len(v) for v in data.variants) + len(data.val_images)
    if cache.bytes_needed(images, shape) > cache.max_bytes:
        return None
    key = cache.key(identity, plan.frozen, data.fingerprint)
    train = cache.get(key, "train", prefix_model, data.variants)
    (val,) = cache.get(key, "val", prefix_model, [data.val_images])
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
    val_ds = ordered_batches(val, data.val_labels)
    # Train to convergence under the epoch cap: stop when the validation metric stops improving.
    stop = keras.callbacks.EarlyStopping(recipe.monitor, patience=recipe.patience, mode="auto")
    history = model.fit(dataset, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps, verbose=0,
                        callbacks=[*callbacks, stop])
    return {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()}, "plan": plan,
            "mode": mode, "model": model}
