"""extract_features: run the frozen backbone once over train/val/test and cache pooled features.

The backbone runs with `training=False` (BatchNorm in inference mode) on a tf.data pipeline (parallel
decode, resize, batch, prefetch). Features are written per split with their labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.backbones import feature_extractor, load_backbone, preprocess_mode
from components.cli import atomic_dir, params_from, parser, run_main
from components.common import write_json
from components.config import Params
from components.datasets import load_split

SPLITS = ("train", "val", "test")


def extract(params: Params, subset: Path, out_dir: Path) -> dict[str, int]:
    """Write `<split>.npz` (features, labels) for each split and `classes.json`; return rows per split."""
    from tqdm import tqdm

    backbone = load_backbone(params.model, params.storage.endpoint_url)
    model = feature_extractor(backbone, params.model.image_size, preprocess_mode(params.model))
    batch = params.extract_features.batch_size
    rows = {}
    for split in SPLITS:
        images, labels, classes = load_split(subset, split, params.model.image_size)
        chunks = []
        for start in tqdm(range(0, len(images), batch), desc=f"extract_features {split}", unit="batch", leave=False):
            chunks.append(np.asarray(model(images[start : start + batch].astype("float32"), training=False)))
        features = np.concatenate(chunks).astype(np.float32)
        np.savez(out_dir / f"{split}.npz", features=features, labels=labels)
        rows[split] = len(labels)
    write_json(out_dir / "classes.json", {"classes": classes, "feature_dim": int(features.shape[1]),
                                           "backbone": params.model.backbone, "weights": params.model.weights})
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.extract_features --subset data/subset --out data/features`."""
    p = parser("extract_features", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--out", required=True, help="folder for <split>.npz and classes.json")
    args = p.parse_args(argv)
    params = params_from(args)
    with atomic_dir(args.out) as staged:
        rows = extract(params, Path(args.subset), staged)
    print(f"extract_features: {rows} feature rows -> {args.out}")


if __name__ == "__main__":
    run_main(main)
