"""The grid's far target: the digits drawn as inverted edge maps, a look the source backbone never saw.

Made offline from scikit-learn's digits (no download), so the labels stay and only the look changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def far_images(images: np.ndarray) -> np.ndarray:
    """Inverted edge maps of grey uint8 images: white ground, dark stroke outlines (scipy's Sobel filter)."""
    from scipy import ndimage

    x = images.astype("float32")
    edges = np.hypot(ndimage.sobel(x, axis=-1), ndimage.sobel(x, axis=-2))
    scale = edges.reshape(len(x), -1).max(axis=1).clip(min=1.0)[:, None, None]
    return (255.0 - 255.0 * edges / scale).round().clip(0, 255).astype(np.uint8)


def write_far(folder: Path, size: int, classes: list[int]) -> Path:
    """The far target as a class-folder tree (`<digit>/<index>.png`), made once."""
    from PIL import Image

    from components.make_digits import digits_images

    if folder.is_dir():
        return folder
    images, labels = digits_images(size)
    staged = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    for digit in classes:
        (staged / str(digit)).mkdir(parents=True)
        pick = np.flatnonzero(labels == digit)
        for index, image in zip(pick, far_images(images[pick]), strict=True):
            Image.fromarray(image, mode="L").save(staged / str(digit) / f"{index:04d}.png")
    staged.replace(folder)
    return folder
