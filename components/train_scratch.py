"""train_scratch: the from-scratch baseline a reviewer would try first, trained on every run.

The backbone's architecture with newly initialised weights, nothing frozen, BatchNormalization training,
the pipeline's augmentation, and fine_tune's budget (epoch cap, patience, batch size). evaluate reports it
next to the frozen-features baseline and the final model, so every run shows which regime won on its data,
and fine_tune weighs it as a candidate: when it scores better on validation, it is the model handed on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import MODEL_FILE, HyperParams, ScratchBaseline, ValidationResult
from tlpipe.data.datasets import split_source
from tlpipe.fingerprint import digest
from tlpipe.fs import atomic_dir, scratch_default
from tlpipe.models.backbones import backbone_identity, load_backbone, preprocess_mode
from tlpipe.models.fitting import Training, train
from tlpipe.models.training import save_model
from tlpipe.reports.plots import training_report

PARAMS = (
    "train_scratch",
    "fine_tune.epochs",
    "fine_tune.batch_size",
    "fine_tune.min_steps_per_epoch",
    "fine_tune.patience",
    "fine_tune.monitor",
    "fine_tune.mixed_precision",
    "fine_tune.input",
    "model.weights",
    "model.image_size",
    "model.head_units",
    "model.dropout",
    "augment",
    "seed",
    "deterministic",
    "storage.endpoint_url",
)


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.train_scratch --subset ... --validation ... --backbone ... --baseline ...`."""
    p = parser("train_scratch", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset")
    p.add_argument("--validation", required=True, help="validate_data's result (the subset passed)")
    p.add_argument("--backbone", required=True, help="the backbone whose architecture is trained from scratch")
    p.add_argument("--baseline", required=True, help="folder for model.keras")
    p.add_argument("--report", required=True, help="folder for metrics.json, history.json and curves")
    p.add_argument("--workdir", default=scratch_default("train_scratch"), help="resumable checkpoints")
    args = p.parse_args(argv)
    params = step_params(args, "train_scratch", PARAMS)
    ValidationResult.read(args.validation)
    model_cfg, cfg = params.model, params.fine_tune
    size, weights = model_cfg.image_size, model_cfg.weights
    hp = HyperParams(
        freeze_ratio=0.0,
        learning_rate=params.train_scratch.learning_rate,
        dropout=model_cfg.dropout,
        head_units=model_cfg.head_units,
        regime="scratch",
        train_bn=True,
    )
    from tlpipe.tracking.runs import epoch_callback, step_run

    with step_run(params, "train_scratch", {"subset": args.subset}, args.validation):
        import mlflow

        x_train, y_train, classes = split_source(Path(args.subset), "train", size, cfg.input)
        x_val, y_val, _ = split_source(Path(args.subset), "val", size, cfg.input)
        identity = backbone_identity(args.backbone, weights, size)
        job = Path(args.workdir) / digest(
            {
                "hp": hp.model_dump(),
                "seed": params.seed,
                "size": size,
                "arch": identity,
                "epochs": cfg.epochs,
                "patience": cfg.patience,
                "batch": cfg.batch_size,
                "augment": params.augment.model_dump(),
            },
            16,
        )
        run = Training.from_params(
            params,
            cfg,
            hp=hp,
            preprocess=preprocess_mode(args.backbone),
            load=lambda: load_backbone(args.backbone, weights, size, params.storage.endpoint_url),
            callbacks=[epoch_callback()],
        )
        model, info = train(run, (x_train, y_train, x_val, y_val, classes), job)
        with atomic_dir(args.report) as report:
            metrics = training_report(info["history"], cfg.monitor, report, "train_scratch (from scratch)")
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        with atomic_dir(args.baseline) as staged:
            save_model(model, staged / MODEL_FILE)
            ScratchBaseline(hyperparameters=hp, classes=classes, best_epoch=metrics["best_epoch"]).write(staged)
    shutil.rmtree(info["job_dir"], ignore_errors=True)
    print(
        f"train_scratch: best {cfg.monitor} {metrics.get('best_' + cfg.monitor, float('nan')):.3f} at epoch "
        f"{metrics['best_epoch']} -> {args.baseline}"
    )


if __name__ == "__main__":
    run_main(main)
