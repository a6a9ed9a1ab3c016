"""augment: a preview grid of the training augmentations, and pre-augmented copies of the training split.

The augmentations (rotation, zoom, shift, optional flip; tlpipe/data/augmentation.py) are applied to the
training split only. The preview shows a person what they do; the `augment.copies` copies are what tuning's
cached-activation trials train on (per-epoch random augmentation cannot be cached).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlpipe.cli import atomic_dir, parser, run_main, step_params
from tlpipe.config import AugmentConfig
from tlpipe.contracts import COPIES_FILE, ValidationResult
from tlpipe.data.augmentation import augmented_copies, build_augmenter, preview_grid

PARAMS = ("augment", "seed", "model.image_size")


def augment(images: np.ndarray, labels: np.ndarray, classes: list[str], cfg: AugmentConfig, seed: int,
            preview: Path, out: Path) -> int:
    """Write `preview/preview.png` and `out/train.npz` (copies, labels); returns the number of copies made."""
    augmenter = build_augmenter(cfg, seed)
    # One image per class first, so the preview shows every class.
    order = np.argsort(np.arange(len(labels)) % max(1, len(labels) // len(classes)), kind="stable")
    preview_grid(images[order], augmenter, preview / "preview.png", cfg.preview_samples)
    copies = augmented_copies(images, augmenter, cfg.copies) if augmenter.active else images[:0]
    with open(out / COPIES_FILE, "wb") as fh:
        np.savez(fh, images=copies, labels=np.tile(labels, cfg.copies if len(copies) else 0))
    return cfg.copies if len(copies) else 0


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.augment --subset ... --validation ... --augmented ... --preview ...`."""
    from tlpipe.data.datasets import load_split
    from tlpipe.tracking.runs import step_run

    p = parser("augment", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--validation", required=True, help="validate_data's result (the subset passed)")
    p.add_argument("--augmented", required=True, help="folder for train.npz, the pre-augmented copies")
    p.add_argument("--preview", required=True, help="folder for preview.png")
    args = p.parse_args(argv)
    params = step_params(args, "augment", PARAMS)
    ValidationResult.read(args.validation)
    with step_run(params, "augment", {"subset": args.subset}, args.validation) as _:
        import mlflow

        images, labels, classes = load_split(Path(args.subset), "train", params.model.image_size)
        with atomic_dir(args.preview) as preview, atomic_dir(args.augmented) as out:
            made = augment(images, labels, classes, params.augment, params.seed, preview, out)
        mlflow.log_artifact(str(Path(args.preview) / "preview.png"))
        mlflow.log_metric("copies", made)
    print(f"augment: preview -> {args.preview}; {made} augmented copies of {len(images)} training images "
          f"-> {args.augmented}")


if __name__ == "__main__":
    run_main(main)
