"""pretrain_backbone: the embedded default backbone, a small VGG-style CNN trained on the source classes.

This is real transfer learning with no download: the CNN learns digit strokes on the source digits
(e.g. 0-4), and its convolutional base becomes the frozen/fine-tuned backbone for the target digits.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import BACKBONE_FILE, HISTORY_PNG, METRICS_FILE, BackboneInfo, numbers, write_json
from tlpipe.data.augmentation import build_augmenter
from tlpipe.data.datasets import batches, decode_images
from tlpipe.data.images import is_image_name
from tlpipe.errors import DataError
from tlpipe.fs import atomic_dir
from tlpipe.models.training import compile_for, save_model, set_determinism
from tlpipe.models.vgg import vgg_style
from tlpipe.reports.plots import plot_history
from tlpipe.sections import AugmentConfig, PretrainBackboneConfig

PARAMS = ("pretrain_backbone", "augment", "model.image_size", "seed", "deterministic")


def source_images(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image of a class-folder tree."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataError(
            f"pretrain_backbone source {root}: no class folders; point pretrain_backbone.source at a "
            "folder of <class>/<image> or use builtin:digits"
        )
    paths, labels = [], []
    for index, cls in enumerate(classes):
        files = sorted(str(f) for f in (root / cls).iterdir() if is_image_name(f.name))
        paths += files
        labels += [index] * len(files)
    return decode_images(paths, size, desc="decode source"), np.array(labels, np.int32), classes


def pretrain(
    cfg: PretrainBackboneConfig, size: int, seed: int, deterministic: bool, root: Path, augment: AugmentConfig
) -> tuple[keras.Model, dict]:
    """Train backbone + a softmax layer on the source classes; return the backbone and its metrics."""
    set_determinism(seed, deterministic)
    images, labels, classes = source_images(root, size)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(len(order) * 0.85)
    train, val = order[:cut], order[cut:]
    backbone = vgg_style(size, cfg.filters)
    # A new draw of the transforms each epoch (the augmenter's generator advances); off: the plain images.
    augmenter = build_augmenter(augment, seed) if cfg.augment else None
    model = compile_for(
        keras.Sequential([backbone, keras.layers.Dense(len(classes), activation="softmax")]), cfg.learning_rate
    )
    from tlpipe.tracking.runs import epoch_callback

    history = model.fit(
        batches(images[train], labels[train], cfg.batch_size, shuffle_seed=seed, augmenter=augmenter),
        validation_data=batches(images[val], labels[val], cfg.batch_size),
        epochs=cfg.epochs,
        verbose=2,
        callbacks=[epoch_callback()],
    )
    metrics = {
        "source_classes": classes,
        "source_images": int(len(labels)),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    return backbone, metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.pretrain_backbone --source ... --backbone models/backbone --report ...`."""
    p = parser("pretrain_backbone", __doc__)
    p.add_argument("--source", required=True, help="class folders of the source classes")
    p.add_argument("--backbone", required=True, help="folder for backbone.keras and backbone.json")
    p.add_argument("--report", required=True, help="folder for metrics.json and training curves")
    args = p.parse_args(argv)
    params = step_params(args, "pretrain_backbone", PARAMS)
    from tlpipe.fingerprint import content_hash
    from tlpipe.tracking.runs import step_run

    with step_run(params, "pretrain_backbone", {"source": args.source}) as _:
        import mlflow

        size = params.model.image_size
        backbone, metrics = pretrain(
            params.pretrain_backbone, size, params.seed, params.deterministic, Path(args.source), params.augment
        )
        with atomic_dir(args.report) as report:
            write_json(report / METRICS_FILE, numbers(metrics))
            plot_history(metrics["history"], report / HISTORY_PNG, "pretrain_backbone on source classes")
        mlflow.log_artifact(str(Path(args.report) / HISTORY_PNG))
        with atomic_dir(args.backbone) as staged:
            save_model(backbone, staged / BACKBONE_FILE)
            BackboneInfo(
                architecture=f"vgg_style{list(params.pretrain_backbone.filters)}",
                source_classes=metrics["source_classes"],
                source_images=metrics["source_images"],
                image_size=size,
                sha256=content_hash(staged / BACKBONE_FILE),
                val_accuracy=metrics["val_accuracy"],
                source=args.source,
            ).write(staged)
    print(
        f"pretrain_backbone: val accuracy {metrics['val_accuracy']:.3f} on source classes "
        f"{', '.join(metrics['source_classes'])} -> {args.backbone}"
    )


if __name__ == "__main__":
    run_main(main)
