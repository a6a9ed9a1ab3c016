"""extract_features: run the frozen backbone once over train/val/test and keep the pooled features.

The backbone runs with `training=False` (BatchNorm in inference mode) on a tf.data pipeline (parallel
decode, resize, batch, prefetch). Features are written per split with their labels, batch by batch: memory
holds a few batches of images whatever the size of the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import SPLITS, FeaturesInfo, ValidationResult, features_file
from tlpipe.data.arrays import NpzWriter
from tlpipe.data.datasets import decoded_chunks, split_images
from tlpipe.data.records import Images
from tlpipe.fs import atomic_dir
from tlpipe.models.backbones import backbone_identity, feature_extractor, load_backbone, preprocess_mode

PARAMS = ("model.weights", "model.image_size", "extract_features", "storage.endpoint_url")


def _features(model, paths: Images, size: int, batch: int, desc: str):
    """Features of `paths`, one float32 block per batch; decoding of the next batches overlaps the forward pass.

    There is no separate in-memory path for small splits: decoding everything first and then running the model
    was no faster (benchmarks/README.md, "Scale"), since streaming overlaps the two.
    """
    for images in decoded_chunks(paths, size, batch, desc=desc):
        yield np.asarray(model.predict_on_batch(images.astype("float32")), np.float32)


def extract(
    backbone_spec: str, weights: str, size: int, batch: int, endpoint_url: str | None, subset: Path, out_dir: Path
) -> dict[str, int]:
    """Write `<split>.npz` (features, labels) for each split and features.json; return rows per split."""
    backbone = load_backbone(backbone_spec, weights, size, endpoint_url)
    model = feature_extractor(backbone, size, preprocess_mode(backbone_spec))
    dim = int(model.outputs[0].shape[-1])
    rows = {}
    for split in SPLITS:
        paths, labels, classes = split_images(subset, split)
        with NpzWriter(out_dir / features_file(split)) as npz:
            npz.write(
                "features",
                _features(model, paths, size, batch, f"extract_features {split}"),
                (len(paths), dim),
                np.float32,
            )
            npz.write("labels", [labels], labels.shape, labels.dtype)
        rows[split] = len(labels)
    FeaturesInfo(
        classes=classes,
        feature_dim=dim,
        backbone=Path(backbone_spec).name,
        backbone_sha256=backbone_identity(backbone_spec, weights, size),
    ).write(out_dir)
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.extract_features --subset ... --validation ... --backbone ... --features ...`."""
    p = parser("extract_features", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--validation", required=True, help="validate_data's result (the subset passed)")
    p.add_argument(
        "--backbone",
        required=True,
        help="pretrain_backbone's folder, a .keras file/URI or an application name (vgg16, mobilenet_v2, ...)",
    )
    p.add_argument("--features", required=True, help="folder for <split>.npz and features.json")
    args = p.parse_args(argv)
    params = step_params(args, "extract_features", PARAMS)
    ValidationResult.read(args.validation)
    from tlpipe.tracking.runs import step_run

    with step_run(params, "extract_features", {"subset": args.subset}, args.validation) as _:
        import mlflow

        with atomic_dir(args.features) as staged:
            rows = extract(
                args.backbone,
                params.model.weights,
                params.model.image_size,
                params.extract_features.batch_size,
                params.storage.endpoint_url,
                Path(args.subset),
                staged,
            )
        mlflow.log_metrics({f"{split}_rows": n for split, n in rows.items()})
    print(f"extract_features: {rows} feature rows -> {args.features}")


if __name__ == "__main__":
    run_main(main)
