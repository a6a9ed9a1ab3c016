"""extract_features: run the frozen backbone once over train/val/test and keep the pooled features.

The backbone runs with `training=False` (BatchNorm in inference mode) on a tf.data pipeline (parallel
decode, resize, batch, prefetch). Features are written per split with their labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlpipe.cli import atomic_dir, parser, run_main, step_params
from tlpipe.contracts import SPLITS, FeaturesInfo, ValidationResult, features_file
from tlpipe.data.datasets import load_split
from tlpipe.models.backbones import backbone_identity, feature_extractor, load_backbone, preprocess_mode

PARAMS = ("model.weights", "model.image_size", "extract_features", "storage.endpoint_url")


def extract(backbone_spec: str, weights: str, size: int, batch: int, endpoint_url: str | None, subset: Path,
            out_dir: Path) -> dict[str, int]:
    """Write `<split>.npz` (features, labels) for each split and features.json; return rows per split."""
    from tqdm import tqdm

    backbone = load_backbone(backbone_spec, weights, size, endpoint_url)
    model = feature_extractor(backbone, size, preprocess_mode(backbone_spec))
    rows = {}
    for split in SPLITS:
        images, labels, classes = load_split(subset, split, size)
        chunks = []
        for start in tqdm(range(0, len(images), batch), desc=f"extract_features {split}", unit="batch", leave=False):
            chunks.append(np.asarray(model(images[start : start + batch].astype("float32"), training=False)))
        features = np.concatenate(chunks).astype(np.float32)
        np.savez(out_dir / features_file(split), features=features, labels=labels)
        rows[split] = len(labels)
    FeaturesInfo(classes=classes, feature_dim=int(features.shape[1]), backbone=Path(backbone_spec).name,
                 backbone_sha256=backbone_identity(backbone_spec, weights, size)).write(out_dir)
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.extract_features --subset ... --validation ... --backbone ... --features ...`."""
    p = parser("extract_features", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--validation", required=True, help="validate_data's result (the subset passed)")
    p.add_argument("--backbone", required=True, help="pretrain_backbone's folder, a .keras file/URI or an "
                                                     "application name (vgg16, mobilenet_v2, ...)")
    p.add_argument("--features", required=True, help="folder for <split>.npz and features.json")
    args = p.parse_args(argv)
    params = step_params(args, "extract_features", PARAMS)
    ValidationResult.read(args.validation)
    from tlpipe.tracking.runs import step_run

    with step_run(params, "extract_features", {"subset": args.subset}, args.validation) as _:
        import mlflow

        with atomic_dir(args.features) as staged:
            rows = extract(args.backbone, params.model.weights, params.model.image_size,
                           params.extract_features.batch_size, params.storage.endpoint_url, Path(args.subset),
                           staged)
        mlflow.log_metrics({f"{split}_rows": n for split, n in rows.items()})
    print(f"extract_features: {rows} feature rows -> {args.features}")


if __name__ == "__main__":
    run_main(main)
