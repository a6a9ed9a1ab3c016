"""augment: a preview grid of the training augmentations, and pre-augmented copies of the training split.

The augmentations (rotation, zoom, shift, optional flip; tlpipe/data/augmentation.py) are applied to the
training split only. The preview shows a person what they do; the `augment.copies` copies are what tuning's
cached-activation trials train on (per-epoch random augmentation cannot be cached). The copies are written
into copies.npy chunk by chunk, so memory does not grow with the training split.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import COPIES_FILE, PREVIEW_PNG, ValidationResult
from tlpipe.data.arrays import NpyWriter
from tlpipe.data.augmentation import augmented_copies, build_augmenter, preview_grid
from tlpipe.data.datasets import decode_images, decoded_chunks
from tlpipe.data.records import Images
from tlpipe.fs import atomic_dir
from tlpipe.sections import AugmentConfig

PARAMS = ("augment", "seed", "model.image_size")
CHUNK = 256  # images per augmentation call (the random draws depend on it, as in augmented_copies)
# No in-memory path for small splits: decoding into memory and augmenting there was not measurably faster than
# the scratch-file round trip (1,600 copies of 800 images at 32 px: 2.3-3.7 s vs 1.8-3.2 s, identical bytes).


def _preview_order(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """Indices with one image per class first (labels are grouped by class), so the preview shows every class."""
    return np.argsort(np.arange(len(labels)) % max(1, len(labels) // len(classes)), kind="stable")


def _copies(paths: Images, size: int, augmenter, copies: int, scratch: Path):
    """Chunks of the copies, copy-major: the split is decoded once to a scratch file, then read back per copy."""
    row = size * size * 3
    with tempfile.TemporaryFile(dir=scratch) as raw:
        for chunk in decoded_chunks(paths, size, CHUNK, desc="decode train"):
            raw.write(chunk.data)
        for _ in range(copies):
            raw.seek(0)
            for start in range(0, len(paths), CHUNK):
                n = min(CHUNK, len(paths) - start)
                chunk = np.fromfile(raw, np.uint8, n * row).reshape(n, size, size, 3)
                yield augmented_copies(chunk, augmenter, 1, CHUNK)


def augment(
    paths: Images,
    labels: np.ndarray,
    classes: list[str],
    cfg: AugmentConfig,
    seed: int,
    size: int,
    preview: Path,
    out: Path,
) -> int:
    """Write `preview/preview.png` and `out/copies.npy` (the copies, copy-major); returns the copies made.

    `paths` are the training split's images and `labels` their class indices, grouped by class; copy k of
    image i is row k * len(paths) + i, with label labels[i].
    """
    augmenter = build_augmenter(cfg, seed)
    picks = _preview_order(labels, classes)[: cfg.preview_samples]
    preview_grid(
        decode_images(paths[picks], size, desc="decode preview"), augmenter, preview / PREVIEW_PNG, cfg.preview_samples
    )
    made = cfg.copies if augmenter.active and len(paths) else 0
    NpyWriter.write(
        out / COPIES_FILE,
        _copies(paths, size, augmenter, made, out) if made else [],
        (made * len(paths), size, size, 3),
        np.uint8,
    )
    return made


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.augment --subset ... --validation ... --augmented ... --preview ...`."""
    from tlpipe.data.datasets import split_images
    from tlpipe.tracking.runs import step_run

    p = parser("augment", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--validation", required=True, help="validate_data's result (the subset passed)")
    p.add_argument("--augmented", required=True, help="folder for copies.npy, the pre-augmented copies")
    p.add_argument("--preview", required=True, help="folder for preview.png")
    args = p.parse_args(argv)
    params = step_params(args, "augment", PARAMS)
    ValidationResult.read(args.validation)
    with step_run(params, "augment", {"subset": args.subset}, args.validation) as _:
        import mlflow

        paths, labels, classes = split_images(Path(args.subset), "train")
        with atomic_dir(args.preview) as preview, atomic_dir(args.augmented) as out:
            made = augment(paths, labels, classes, params.augment, params.seed, params.model.image_size, preview, out)
        mlflow.log_artifact(str(Path(args.preview) / PREVIEW_PNG))
        mlflow.log_metric("copies", made)
    print(
        f"augment: preview -> {args.preview}; {made} augmented copies of {len(paths)} training images "
        f"-> {args.augmented}"
    )


if __name__ == "__main__":
    run_main(main)
