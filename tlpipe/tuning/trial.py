"""One tuning trial, fast: train only what the trial unfreezes, on activations cached at its freeze boundary.

The frozen prefix of the backbone (BatchNorm in inference mode) maps the same input to the same output every
time, so its output is computed once per (backbone, weights, boundary, data, augmentation) and cached as a
.npy file on disk (tlpipe/tuning/cache.py); a trial then trains the unfrozen suffix + head on it. Per-epoch
random augmentation cannot be cached, so trials use a fixed scheme: pass p over the training set is variant
p mod (K + 1) (the original and K copies pre-augmented by `augment`). The full-model path (the fall-back when
activations exceed the cache's disk budget) uses the same variants, so both paths compute the same thing.

Images and activations are held in memory up to a byte budget (`tune.cache_max_bytes`), one resident copy
shuffled by index; above it they are read from .npy files on local disk in shuffled blocks, so memory stays
flat whatever the dataset size.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlpipe.contracts import COPIES_FILE, HyperParams
from tlpipe.data.arrays import NpyRows, NpyWriter
from tlpipe.data.datasets import decode_images, decoded_chunks, passes_per_epoch, split_images
from tlpipe.data.identity import split_ids
from tlpipe.errors import DataError
from tlpipe.fingerprint import content_hash, digest
from tlpipe.fs import scratch_dir
from tlpipe.models.backbones import FreezePlan, apply_freeze, preprocessing, split_at
from tlpipe.models.training import compile_for, make_head
from tlpipe.tuning.batches import ordered_batches, variant_batches
from tlpipe.tuning.cache import DEFAULT_MEMORY_BYTES, ActivationCache, cache_plan, folder_bytes, gib
from tlpipe.tuning.reuse import Built, ModelPool


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
    min_steps_per_epoch: int = 1  # fine_tune's: a trial's epoch is as long as a final training's
    freeze_range: tuple[float, float] = (0.0, 1.0)  # tune.freeze_ratio: the boundaries a trial can land on


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

    @property
    def images(self) -> int:
        """Images a trial's activation cache holds: every training variant and the validation split."""
        return len(self.labels) * len(self.variants) + len(self.val_labels)


def _fingerprint(subset: Path, size: int, copies: Path | None) -> str:
    """What the trial images are, cheaply: the manifest's image hashes per split, the size, the copies' bytes."""
    return digest(
        {
            "size": size,
            "images": split_ids(subset, ("train", "val")),
            "copies": content_hash(copies) if copies is not None else "",
        },
        20,
    )


def load_trial_data(
    subset: Path, augmented: Path | None, size: int, mode: str = "auto", memory_bytes: int = DEFAULT_MEMORY_BYTES
) -> TrialData:
    """The original training split plus the pre-augmented copies, and the validation split.

    `mode`: "memory", "stream" (decoded once to scratch .npy files, read back in batches) or "auto" (memory
    while all variants and the validation split, as uint8, fit `memory_bytes`).
    """
    train, labels, classes = split_images(subset, "train")
    val, val_labels, _ = split_images(subset, "val")
    path = Path(augmented) / COPIES_FILE if augmented is not None else None
    copies = NpyRows(path) if path is not None and path.exists() else None
    if copies is not None and not len(copies):
        copies = None
    if copies is not None and (len(copies) % len(train) or copies.row_shape != (size, size, 3)):
        raise DataError(
            f"{path}: {copies.shape} does not match the {len(train)} training images at {size} px; rerun augment"
        )
    k = len(copies) // len(train) if copies is not None else 0
    fingerprint = _fingerprint(subset, size, path if copies is not None else None)
    total = len(train) * (k + 1) + len(val)
    if mode == "memory" or (mode == "auto" and total * size * size * 3 <= memory_bytes):
        x = decode_images(train, size, desc="decode train")
        extra = list(copies.load().reshape(k, *x.shape)) if copies is not None else []
        return TrialData(
            [x, *extra], labels, decode_images(val, size, desc="decode val"), val_labels, classes, fingerprint
        )
    stack = ExitStack()
    folder = stack.enter_context(scratch_dir("trial-data"))
    for name, images in (("train", train), ("val", val)):
        NpyWriter.write(
            folder / f"{name}.npy",
            decoded_chunks(images, size, desc=f"decode {name}"),
            (len(images), size, size, 3),
            np.uint8,
        )
    extra_rows = [NpyRows(path, i * len(train), len(train)) for i in range(k)] if path is not None else []
    variants = [NpyRows(folder / "train.npy"), *extra_rows]
    data = TrialData(variants, labels, NpyRows(folder / "val.npy"), val_labels, classes, fingerprint)
    weakref.finalize(data, stack.close)  # the scratch files go with the data
    return data


def _prefix_model(backbone: keras.Model, frozen: int, size: int, mode: str) -> tuple[keras.Model, keras.Model | None]:
    """(image -> activations at the boundary, boundary -> features); no suffix when all is frozen."""
    suffix = split_at(backbone, frozen)[1] if frozen < len(backbone.layers) - 1 else None
    return _taps(backbone, [frozen], size, mode), suffix


def _taps(backbone: keras.Model, boundaries: list[int], size: int, mode: str) -> keras.Model:
    """Image -> the activations at each of `boundaries` (BatchNorm in inference mode), one output each."""
    inputs = keras.Input((size, size, 3))
    layer = preprocessing(mode)
    x = layer(inputs) if layer is not None else inputs
    outputs = [backbone.layers[k].output for k in boundaries]
    taps = keras.Model(backbone.input, outputs if len(outputs) > 1 else outputs[0], name="backbone_taps")
    return keras.Model(inputs, taps(x, training=False))


def _fill_boundaries(
    backbone: keras.Model, plan: FreezePlan, recipe: Recipe, cache: ActivationCache, identity: str, data: TrialData
) -> None:
    """Cache this trial's boundary and, in the same pass, the deeper boundaries of the study's range that fit.

    Each boundary's activations are computed from the images, so caching each on first use runs the early,
    wide layers once per boundary. The layers up to this trial's boundary run anyway; the deeper boundaries
    then cost only their own layers and are smaller to write, so one pass stores them all. Shallower ones
    are not written ahead (measured: the wide early activations cost more to write than to recompute when
    a trial needs them). The others only take the cache's free room: they never evict a stored boundary.
    """
    from tlpipe.models.backbones import freeze_plan

    lo, hi = (freeze_plan(backbone, r).frozen for r in recipe.freeze_range)
    index = {layer.name: k for k, layer in enumerate(backbone.layers)}
    size = {index[name]: n for name, n in cache_plan(backbone, data.images, cache.dtype.name).items()}
    room = cache.disk_bytes - folder_bytes(cache.folder) - size[plan.frozen]
    chosen = [plan.frozen]
    for k in sorted(size, reverse=True):
        key = cache.key(identity, k, data.fingerprint)
        if plan.frozen < k and lo <= k <= hi and size[k] <= room and not cache.path(key, "train").exists():
            chosen.append(k)
            room -= size[k]
    names = ", ".join(backbone.layers[k].name for k in chosen)
    total = gib(sum(size[k] for k in chosen))
    print(f"tune: caching activations of {data.images} images at {names} in one pass ({total} in {cache.folder})")
    model = _taps(backbone, chosen, recipe.image_size, recipe.preprocess)
    keys = [cache.key(identity, k, data.fingerprint) for k in chosen]
    cache.fill(keys, "train", model, data.variants)
    cache.fill(keys, "val", model, [data.val_images])


def cached_model(
    backbone: keras.Model,
    plan: FreezePlan,
    head: keras.Model,
    recipe: Recipe,
    cache: ActivationCache,
    identity: str,
    data: TrialData,
) -> tuple[keras.Model, list, object] | None:
    """(suffix + head model, train activations per variant, val activations), or None over the disk budget.

    The activations are held in memory within the cache's memory budget, else read from its disk.
    """
    prefix_model, suffix = _prefix_model(backbone, plan.frozen, recipe.image_size, recipe.preprocess)
    shape = tuple(prefix_model.output.shape[1:])
    needed = cache.bytes_needed(data.images, shape)
    refusal = cache.refusal(plan.boundary, needed)
    if refusal is not None:
        print(refusal)
        return None
    key, in_memory = cache.key(identity, plan.frozen, data.fingerprint), cache.in_memory(needed)
    if not cache.path(key, "train").exists():
        _fill_boundaries(backbone, plan, recipe, cache, identity, data)
    train = cache.get(key, "train", prefix_model, data.variants, in_memory)
    (val,) = cache.get(key, "val", prefix_model, [data.val_images], in_memory)
    inputs = keras.Input(shape, name="activations")
    features = suffix(inputs, training=False) if suffix is not None else inputs
    model = keras.Model(inputs, head(features), name="cached_trial")
    return model, train, val


def build_trial(
    recipe: Recipe,
    hp: HyperParams,
    data: TrialData,
    backbone: keras.Model,
    head_path: Path | None,
    cache: ActivationCache | None,
    identity: str,
) -> Built:
    """A trial's compiled model and its inputs: the suffix + head on cached activations, or the full model."""
    from tlpipe.models.backbones import build_classifier, regime_plan

    keras.utils.set_random_seed(recipe.seed)
    backbone, plan, train_bn = regime_plan(backbone, hp.regime, hp.freeze_ratio)
    apply_freeze(backbone, plan, train_bn or hp.train_bn)
    warm = head_path if hp.regime != "scratch" else None  # a scratch backbone's features are new: fresh head
    head = make_head(warm, backbone.output.shape[-1], len(data.classes), hp)
    cached = cached_model(backbone, plan, head, recipe, cache, identity, data) if cache and plan.frozen > 0 else None
    if cached is not None:
        built = Built(*cached, mode="cached", plan=plan)
    else:
        model = build_classifier(backbone, head, recipe.image_size, recipe.preprocess)
        built = Built(model, data.variants, data.val_images, mode="full", plan=plan)
    compile_for(built.model, hp.learning_rate)
    return built


def run_trial(
    recipe: Recipe,
    hp: HyperParams,
    data: TrialData,
    backbone: keras.Model | Callable[[], keras.Model],
    head_path: Path | None,
    cache: ActivationCache | None,
    identity: str,
    callbacks=(),
    pool: ModelPool | None = None,
) -> dict:
    """Train one trial; returns history, the freeze plan, whether the cache was used and the model reused.

    `backbone`: the pretrained model, or a function that loads it (not called when `pool` holds this trial's
    configuration: tlpipe/tuning/reuse.py).
    """
    built = pool.take(hp) if pool is not None else None
    reused = built is not None
    if built is None:
        loaded = backbone if isinstance(backbone, keras.Model) else backbone()
        built = build_trial(recipe, hp, data, loaded, head_path, cache, identity)
        if pool is not None:
            pool.keep(hp, built)
    model = built.model
    keras.utils.set_random_seed(recipe.seed)
    epochs, passes = recipe.epochs, passes_per_epoch(len(data.labels), recipe.batch_size, recipe.min_steps_per_epoch)
    dataset, steps = variant_batches(built.train, data.labels, recipe.batch_size, epochs, recipe.seed, passes)
    val_ds = ordered_batches(built.val, data.val_labels)
    # Train to convergence under the epoch cap: stop when the validation metric stops improving.
    stop = keras.callbacks.EarlyStopping(recipe.monitor, patience=recipe.patience, mode="auto")
    history = model.fit(
        dataset, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[*callbacks, stop]
    )
    return {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "plan": built.plan,
        "mode": built.mode,
        "model": model,
        "reused": reused,
    }
