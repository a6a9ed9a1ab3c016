"""The input_pipeline benchmark's loaders: the pipeline's tf.data input against a Keras generator baseline."""

from __future__ import annotations

import resource
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLASSES = ("class_a", "class_b")

# The seeds' augmentation settings, shared by the three loaders compared.
ROTATION, ZOOM, WIDTH_SHIFT, HEIGHT_SHIFT, FLIP = 10.0, 0.1, 0.1, 0.1, True


def make_jpegs(root: Path, count: int, width: int, height: int, seed: int = 0, ext: str = ".jpg") -> list[str]:
    """`count` deterministic gradient + noise images (JPEG, or PNG for ext=".png") in two class folders."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        cls = CLASSES[i % len(CLASSES)]
        rng = np.random.default_rng(seed * 1_000_003 + i)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0  # 0..1 gradient
        colour = rng.uniform(60, 255, 3).astype(np.float32)
        image = ramp[..., None] * colour + rng.normal(0, 25, (height, width, 3)).astype(np.float32)
        path = root / cls / f"{i:05d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
        if ext == ".jpg":
            pixels.save(path, quality=90)
        else:
            pixels.save(path)
        paths.append(str(path))
    return sorted(paths)


def labels_of(paths: list[str]) -> np.ndarray:
    """Integer labels from the class folder names."""
    return np.array([CLASSES.index(Path(p).parent.name) for p in paths], np.int32)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarise(epoch_seconds: list[float], images_per_epoch: int, setup_seconds: float = 0.0) -> dict:
    """Throughputs: total (setup included), first epoch (setup included), steady state (epochs 2..E)."""
    epochs = len(epoch_seconds)
    total = setup_seconds + sum(epoch_seconds)
    steady = epoch_seconds[1:] or epoch_seconds
    return {
        "setup_seconds": round(setup_seconds, 4),
        "epoch_seconds": [round(s, 4) for s in epoch_seconds],
        "total_seconds": round(total, 4),
        "images_delivered": images_per_epoch * epochs,
        "images_per_s_total": round(images_per_epoch * epochs / total, 2),
        "images_per_s_first_epoch": round(images_per_epoch / (setup_seconds + epoch_seconds[0]), 2),
        "images_per_s_steady": round(images_per_epoch * len(steady) / sum(steady), 2),
        "steady_epochs": "2..E" if epochs > 1 else "1 (only one epoch run)",
    }


def batch_facts(x: np.ndarray) -> dict:
    """Shape, dtype and value range of a delivered batch (shows the loaders deliver the same thing)."""
    return {"batch_shape": list(x.shape), "dtype": str(x.dtype), "min": float(x.min()), "max": float(x.max())}


class Loader(ABC):
    """One loader under test: a timed setup, then timed epochs, with the CPU time it used counted."""

    def __init__(self, name: str, setup_is: str):
        self.name, self.setup_is = name, setup_is
        self.setup_seconds, self.epoch_seconds, self.cpu, self.count, self.sample = 0.0, [], 0.0, 0, {}
        self.extra: dict = {}

    @abstractmethod
    def _epoch(self) -> tuple[int, Any]:
        """One epoch's (images delivered, last batch)."""

    def timed(self, fn):
        """Run fn, charging its wall and CPU time to this loader; return (result, wall seconds)."""
        cpu, start = cpu_seconds(), time.perf_counter()
        out = fn()
        self.cpu += cpu_seconds() - cpu
        return out, time.perf_counter() - start

    def run_epoch(self) -> None:
        """Deliver one epoch (every batch materialised as numpy) and record its time."""
        (count, x), seconds = self.timed(self._epoch)
        self.epoch_seconds.append(seconds)
        self.count, self.sample = count, batch_facts(x)

    def result(self) -> dict:
        out = summarise(self.epoch_seconds, self.count, self.setup_seconds)
        wall = self.setup_seconds + sum(self.epoch_seconds)
        out.update(
            self.extra,
            sample=self.sample,
            setup_is=self.setup_is,
            cpu_seconds=round(self.cpu, 3),
            cores_busy=round(self.cpu / wall, 2),
        )
        return out


class GeneratorLoader(Loader):
    """The seeds' loader: flow_from_directory with the seeds' augmentations, rescale 1/255."""

    def __init__(self, root: Path, size: int, batch: int):
        super().__init__("imagedatagenerator", "ImageDataGenerator + flow_from_directory (directory scan)")
        self.extra["notes"] = (
            "decodes (PIL), resizes (nearest, the default) and augments (scipy) every image "
            "every epoch; output rescaled to 0..1"
        )

        def setup():
            from tf_keras.preprocessing.image import ImageDataGenerator

            generator = ImageDataGenerator(
                rotation_range=ROTATION,
                zoom_range=ZOOM,
                width_shift_range=WIDTH_SHIFT,
                height_shift_range=HEIGHT_SHIFT,
                horizontal_flip=FLIP,
                rescale=1.0 / 255,
            )
            return generator.flow_from_directory(
                str(root),
                target_size=(size, size),
                batch_size=batch,
                class_mode="binary",
                shuffle=True,
                seed=1,
            )

        self.flow, self.setup_seconds = self.timed(setup)

    def _epoch(self):
        count = 0
        for _ in range(len(self.flow)):
            x, _y = next(self.flow)
            count += len(x)
        return count, x


class DatasetLoader(Loader):
    """Our loader: decode_images once (unless `decoded` = (images, seconds) is shared), then batches()."""

    def __init__(self, name: str, paths: list[str], size: int, batch: int, augmenter, decoded=None):
        from tlpipe.data.datasets import batches, decode_images

        super().__init__(
            name,
            "decode_images (parallel decode + area resize when shrinking, once) + batches() "
            "(index shuffle + gather, one XLA-compiled resampling per batch for FusedAugment)",
        )
        if decoded is None:
            self.images, decode_seconds = self.timed(lambda: decode_images(paths, size))
        else:
            self.images, decode_seconds = decoded
            self.setup_is += " (decode shared with tlpipe_fused: its measured decode time is charged here too)"
        labels = labels_of(paths)
        self.ds, build_seconds = self.timed(
            lambda: batches(self.images, labels, batch, augmenter=augmenter, shuffle_seed=1)
        )
        self.setup_seconds = decode_seconds + build_seconds
        self.extra.update(decode_seconds=round(decode_seconds, 4), dataset_build_seconds=round(build_seconds, 4))

    def _epoch(self):
        count = 0
        for x, _y in self.ds:
            x = x.numpy()
            count += len(x)
        return count, x


class _KerasLayersAugment:
    """Four separate Keras preprocessing layers, each resampling the batch (what FusedAugment fuses)."""

    active = True

    def __init__(self, seed: int):
        import keras

        self.model = keras.Sequential(
            [
                keras.layers.RandomRotation(ROTATION / 360.0, fill_mode="nearest", seed=seed),
                keras.layers.RandomZoom(ZOOM, fill_mode="nearest", seed=seed + 1),
                keras.layers.RandomTranslation(HEIGHT_SHIFT, WIDTH_SHIFT, fill_mode="nearest", seed=seed + 2),
                keras.layers.RandomFlip("horizontal", seed=seed + 3),
            ],
            name="keras_layers_augment",
        )

    def __call__(self, images, training=True):
        return self.model(images, training=training)


def bench_loaders(root: Path, paths: list[str], size: int, batch: int, epochs: int) -> dict[str, dict]:
    """Set the three loaders up, then run their epochs interleaved (round-robin), so that load from other
    processes on a shared machine falls on all of them alike rather than on whichever ran last."""
    from tlpipe.data.augmentation import FusedAugment

    idg = GeneratorLoader(root, size, batch)
    fused = DatasetLoader(
        "tlpipe_fused",
        paths,
        size,
        batch,
        FusedAugment(
            rotation_degrees=ROTATION,
            zoom=ZOOM,
            width_shift=WIDTH_SHIFT,
            height_shift=HEIGHT_SHIFT,
            horizontal_flip=FLIP,
            seed=1,
        ),
    )
    layers = DatasetLoader(
        "tfdata_keras_layers",
        paths,
        size,
        batch,
        _KerasLayersAugment(seed=1),
        decoded=(fused.images, fused.extra["decode_seconds"]),
    )
    loaders = [idg, fused, layers]
    for epoch in range(epochs):
        for loader in loaders:
            loader.run_epoch()
        print(
            f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{x.name} {x.epoch_seconds[-1]:.2f} s" for x in loaders),
            flush=True,
        )
    return {loader.name: loader.result() for loader in loaders}
