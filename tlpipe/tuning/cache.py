"""The activation cache: a freeze boundary's activations computed once, kept in memory or spilled to local disk.

Two byte budgets decide where a boundary's activations live. Up to `tune.cache_max_bytes` (the memory budget)
they are loaded into memory, one resident copy; above it they stay in the .npy file on local disk (the
worker's `--cache-dir`, an emptyDir on Kubeflow) and are streamed in shuffled blocks; only above
`tune.cache_disk_bytes` (default: 90 % of the free space there) does a trial fall back to the full model.
`cache_plan` gives the bytes per freeze point before any trial runs, so a platform can size the scratch disk.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import keras
import numpy as np

from tlpipe.data.arrays import NpyRows, NpyWriter
from tlpipe.fingerprint import digest
from tlpipe.fs import SCRATCH_LIMIT_ENV

DEFAULT_MEMORY_BYTES = 2 * 1024**3  # tune.cache_max_bytes' default
DISK_SHARE = 0.9  # of the free space: leave the rest to the checkpoints and logs on the same disk


def gib(n: int) -> str:
    """Bytes as GiB for a message."""
    return f"{n / 2**30:.2f} GiB"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) if Path(folder).is_dir() else 0


def disk_budget(folder: Path) -> int:
    """Default `tune.cache_disk_bytes`: DISK_SHARE of the free space at `folder` plus what the cache holds.

    In a pod the scratch volume is an emptyDir whose free space is the node's: its size limit (set in
    SCRATCH_LIMIT_ENV by pipelines/platform.py) caps the budget, since the kubelet evicts a pod over it.
    """
    probe = Path(folder).resolve()
    while not probe.exists():
        probe = probe.parent
    budget = DISK_SHARE * (shutil.disk_usage(probe).free + folder_bytes(folder))
    limit = os.environ.get(SCRATCH_LIMIT_ENV, "")
    if limit:
        from kubernetes.utils.quantity import parse_quantity  # the Kubernetes quantity grammar ("20Gi", "500M")

        budget = min(budget, DISK_SHARE * float(parse_quantity(limit)))
    return int(budget)


def cache_plan(backbone: keras.Model, images: int, dtype: str = "float16", min_ratio: float = 0.0) -> dict[str, int]:
    """Bytes of the cached activations of `images` trial images at each freeze point, boundary name -> bytes.

    `images` counts every image a trial's cache holds: the training split once per variant (the original
    and each pre-augmented copy) plus the validation split. Only shapes are read, so a backbone built
    without weights (`load_backbone(name, "none", size)`) gives the same plan. `min_ratio` keeps the
    freeze points that freeze at least that share of the layers.
    """
    from tlpipe.models.backbones import cut_points

    itemsize = np.dtype(dtype).itemsize
    layers = backbone.layers
    return {
        layers[k].name: images * math.prod(layers[k].output.shape[1:]) * itemsize
        for k in cut_points(backbone)
        if k > 0 and k >= min_ratio * (len(layers) - 1)
    }


def scratch_bytes(plan: dict[str, int], image_bytes: int = 0, every_point: bool = False) -> int:
    """Scratch disk a tuning worker needs, from a `cache_plan`.

    The largest boundary's activations (or all of them with `every_point`, so that no boundary is ever
    recomputed) plus `image_bytes` of trial images decoded to disk when they exceed the memory budget.
    """
    return (sum(plan.values()) if every_point else max(plan.values(), default=0)) + image_bytes


def worker_scratch(
    backbone: keras.Model,
    image_size: int,
    train_images: int,
    val_images: int,
    copies: int,
    dtype: str = "float16",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    every_point: bool = False,
    min_ratio: float = 0.0,
) -> str:
    """The Kubernetes quantity (e.g. "3Gi") of a tuning worker's scratch emptyDir, from the same estimate.

    Trial images are the training split once per variant (`copies` pre-augmented copies + the original)
    plus the validation split; when they exceed `memory_bytes` as uint8 they are decoded to scratch too.
    `min_ratio` sizes for the freeze points from that ratio on (the early, wide boundaries are the largest
    and gain least from the cache; a trial there falls back to the full model when they do not fit).
    Divided by DISK_SHARE, so that the default `tune.cache_disk_bytes` (DISK_SHARE of the free space)
    admits the largest boundary on an empty volume.
    """
    images = train_images * (copies + 1) + val_images
    image_bytes = images * image_size * image_size * 3
    plan = cache_plan(backbone, images, dtype, min_ratio)
    needed = scratch_bytes(plan, image_bytes if image_bytes > memory_bytes else 0, every_point)
    return f"{max(1, math.ceil(needed / DISK_SHARE / 2**30))}Gi"


class ActivationCache:
    """float16/float32 activations in .npy files under `folder`, least recently used evicted over `disk_bytes`.

    `memory_bytes` decides whether a boundary's activations are loaded into memory or read from disk.
    """

    def __init__(self, folder: Path, memory_bytes: int, dtype: str, disk_bytes: int | None = None):
        self.folder, self.memory_bytes, self.dtype = Path(folder), memory_bytes, np.dtype(dtype)
        self.disk_bytes = disk_budget(self.folder) if disk_bytes is None else disk_bytes

    def key(self, identity: str, frozen: int, fingerprint: str) -> str:
        """Cache key: backbone identity + boundary + the images' fingerprint (augmentation included) + dtype."""
        return digest(f"{identity}|{frozen}|{self.dtype}|{fingerprint}", 20)

    def bytes_needed(self, images: int, shape: tuple[int, ...]) -> int:
        """Bytes for `images` activations of `shape`."""
        return images * math.prod(shape) * self.dtype.itemsize

    def in_memory(self, needed: int) -> bool:
        """Whether activations of `needed` bytes are held in memory (else streamed from disk)."""
        return needed <= self.memory_bytes

    def refusal(self, boundary: str, needed: int) -> str | None:
        """The one-line reason a boundary cannot be cached (over the disk budget), or None when it can."""
        if needed <= self.disk_bytes:
            return None
        return (
            f"tune: activations at {boundary} need {gib(needed)} on disk in {self.folder}, over "
            f"tune.cache_disk_bytes={self.disk_bytes} ({gib(self.disk_bytes)}); this trial trains the full "
            f"model (give --cache-dir {gib(needed)} or more)"
        )

    def describe(self, plan: dict[str, int]) -> str:
        """One line: the cache size per freeze point, where each would live, and where the cache is."""
        where = {
            name: ("memory" if self.in_memory(n) else "disk" if n <= self.disk_bytes else "off")
            for name, n in plan.items()
        }
        points = ", ".join(f"{name} {gib(n)} ({where[name]})" for name, n in plan.items())
        return (
            f"tune: activation cache in {self.folder} (memory budget {gib(self.memory_bytes)}, disk budget "
            f"{gib(self.disk_bytes)}): {points or 'no freeze point'}"
        )

    def evict(self, needed: int, keep: str = "") -> int:
        """Delete least-recently-used entries until the folder plus `needed` bytes fits `disk_bytes`."""
        entries = [d for d in self.folder.glob("*") if d.is_dir() and d.name != keep] if self.folder.is_dir() else []
        sizes = {d: folder_bytes(d) for d in entries}
        total, removed = sum(sizes.values()) + (folder_bytes(self.folder / keep) if keep else 0), 0
        for entry in sorted(entries, key=lambda d: d.stat().st_mtime):
            if total + needed <= self.disk_bytes:
                break
            shutil.rmtree(entry, ignore_errors=True)
            total -= sizes[entry]
            removed += 1
        return removed

    def path(self, key: str, name: str) -> Path:
        """Where the activations `name` ("train" or "val") of cache entry `key` live."""
        return self.folder / key / f"{name}.npy"

    def fill(self, keys: list[str], name: str, model: keras.Model, parts: list, batch: int = 128) -> None:
        """Compute `name` for every entry of `keys` in one pass of `model`, whose outputs follow `keys`.

        One pass serves several freeze boundaries: the layers up to the deepest are run once per image, and
        each boundary's output is written to its own .npy as the batches go by (memory holds one batch).
        """
        shapes = [tuple(out.shape[1:]) for out in model.outputs]
        total = sum(len(p) for p in parts)
        self.evict(sum(self.bytes_needed(total, shape) for shape in shapes), keep=keys[0])

        def chunks():
            for part in parts:
                blocks = (
                    (part[i : i + batch] for i in range(0, len(part), batch))
                    if isinstance(part, np.ndarray)
                    else part.chunks(batch)
                )
                for block in blocks:
                    outs = model(block.astype("float32"), training=False)
                    outs = outs if isinstance(outs, list | tuple) else [outs]
                    yield [np.asarray(out).astype(self.dtype) for out in outs]

        # Unique staging names: two workers computing the same key publish the same bytes atomically.
        tag = uuid.uuid4().hex[:8]
        staged = [self.path(key, name).with_name(f".{name}.{tag}.npy") for key in keys]
        NpyWriter.write_many(staged, chunks(), [(total, *shape) for shape in shapes], self.dtype)
        for key, path in zip(keys, staged, strict=True):
            path.replace(self.path(key, name))

    def get(self, key: str, name: str, model: keras.Model, parts: list, in_memory: bool, batch: int = 128) -> list:
        """The activations of `model` on each image array of `parts`, computed once and stored as one .npy.

        Returns one array per part: loaded into memory when `in_memory`, else rows of the file (NpyRows).
        """
        path = self.path(key, name)
        if not path.exists():
            self.fill([key], name, model, parts, batch)
        os.utime(path.parent)  # recently used: the last to be evicted
        out, start = [], 0
        for part in parts:
            rows = NpyRows(path, start, len(part))
            out.append(rows.load() if in_memory else rows)
            start += len(part)
        return out
