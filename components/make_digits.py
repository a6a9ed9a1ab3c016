"""make_digits: the embedded default data set, written offline as PNG files in class folders.

scikit-learn ships 1,797 real 8x8 handwritten digits (no download). The classes are split into a
*source* set, on which `pretrain_backbone` trains our own backbone, and a *target* set, the transfer task.
A class listed on both sides is the ImageNet -> cats-vs-dogs case (the source saw the target's classes, on
other images): every third image of it (by index) goes to the source and the rest to the target, so no image
is in both sets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tlpipe.cli import parser, run_main, step_params
from tlpipe.fs import atomic_dir
from tlpipe.sections import MakeDigitsConfig

PARAMS = ("make_digits",)
SHARED_SOURCE_EVERY = 3  # a class on both sides: images 0, 3, 6, ... of it go to the source


def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 grey images of `size` x `size` (bicubic upscale of the 8x8 originals)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = (bunch.images / 16.0 * 255.0).round().astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in raw])
    return images, bunch.target.astype(int)


def digit_indices(labels: np.ndarray, cfg: MakeDigitsConfig) -> dict[str, dict[int, np.ndarray]]:
    """The images (indices into `labels`) of each set and class; a class on both sides is split, never shared."""
    shared = set(cfg.source_classes) & set(cfg.target_classes)
    sets: dict[str, dict[int, np.ndarray]] = {"source": {}, "target": {}}
    for part, classes in (("source", cfg.source_classes), ("target", cfg.target_classes)):
        for digit in classes:
            pick = np.flatnonzero(labels == digit)
            if digit in shared:
                source = pick[::SHARED_SOURCE_EVERY]
                pick = source if part == "source" else np.setdiff1d(pick, source)
            sets[part][digit] = pick
    return sets


def make_digits(cfg: MakeDigitsConfig, out_dir: Path) -> dict[str, int]:
    """Write `out_dir/source/<digit>/*.png` and `out_dir/target/<digit>/*.png`; return counts per set."""
    images, labels = digits_images(cfg.image_size)
    counts = {"source": 0, "target": 0}
    for part, classes in digit_indices(labels, cfg).items():
        for digit, pick in classes.items():
            folder = out_dir / part / str(digit)
            folder.mkdir(parents=True)
            for index in pick:
                Image.fromarray(images[index], mode="L").save(folder / f"{index:04d}.png", optimize=False)
                counts[part] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.make_digits --digits data/raw/digits`."""
    p = parser("make_digits", __doc__)
    p.add_argument("--digits", required=True, help="folder to write source/ and target/ into")
    args = p.parse_args(argv)
    params = step_params(args, "make_digits", PARAMS)
    from tlpipe.tracking.runs import step_run

    with step_run(params, "make_digits") as _, atomic_dir(args.digits) as staged:
        import mlflow

        counts = make_digits(params.make_digits, staged)
        mlflow.log_metrics({f"{part}_images": n for part, n in counts.items()})
    print(f"make_digits: {counts['source']} source and {counts['target']} target images in {args.digits}")


if __name__ == "__main__":
    run_main(main)
