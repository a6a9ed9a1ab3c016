"""make_digits: the embedded default data set, written offline as PNG files in class folders.

scikit-learn ships 1,797 real 8x8 handwritten digits (no download). The classes are split into a
*source* set, on which `pretrain_backbone` trains our own backbone, and a *target* set, the transfer task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from components.cli import atomic_dir, params_from, parser, run_main
from components.config import MakeDigitsConfig


def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 grey images of `size` x `size` (bicubic upscale of the 8x8 originals)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = (bunch.images / 16.0 * 255.0).round().astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in raw])
    return images, bunch.target.astype(int)


def make_digits(cfg: MakeDigitsConfig, out_dir: Path) -> dict[str, int]:
    """Write `out_dir/source/<digit>/*.png` and `out_dir/target/<digit>/*.png`; return counts per set."""
    images, labels = digits_images(cfg.image_size)
    counts = {"source": 0, "target": 0}
    for part, classes in (("source", cfg.source_classes), ("target", cfg.target_classes)):
        for digit in classes:
            folder = out_dir / part / str(digit)
            folder.mkdir(parents=True)
            for index in np.flatnonzero(labels == digit):
                Image.fromarray(images[index], mode="L").save(folder / f"{index:04d}.png", optimize=False)
                counts[part] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.make_digits --out data/raw/digits`."""
    p = parser("make_digits", __doc__)
    p.add_argument("--out", required=True, help="folder to write source/ and target/ into")
    args = p.parse_args(argv)
    params = params_from(args)
    with atomic_dir(args.out) as staged:
        counts = make_digits(params.make_digits, staged)
    print(f"make_digits: {counts['source']} source and {counts['target']} target images in {args.out}")


if __name__ == "__main__":
    run_main(main)
