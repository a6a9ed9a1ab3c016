"""The few lines a pipeline run ends on: the final model's score, its baselines, the registry, what to do next."""

from __future__ import annotations

from pathlib import Path

from tlpipe.contracts import EvalMetrics, Registration, TrainedModel


def _acc(block: dict | None) -> str:
    if not block or block.get("accuracy") is None:
        return "-"
    ci = block.get("accuracy_ci95")
    return f"{block['accuracy']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def run_summary(registration: Registration, evaluation: EvalMetrics | None, run: TrainedModel) -> list[str]:
    """Test accuracy and CI, the baselines, the chosen regime and params, the version and alias, the next step."""
    hp = run.hyperparameters
    regime = (
        f"{hp.regime}, freeze ratio {hp.freeze_ratio:.2f}, learning rate {hp.learning_rate:.2g}"
        if hp.regime == "transfer"
        else f"{hp.regime}, learning rate {hp.learning_rate:.2g}"
    )
    lines = ["── tlpipe run summary ──"]
    if evaluation is not None:
        lines.append(
            f"final model: test accuracy {_acc(evaluation.model_dump())} on {evaluation.test_images} images ({regime})"
        )
        lines.append(
            f"baselines:   frozen features + head {_acc(evaluation.frozen_features)}; "
            f"from scratch {_acc(evaluation.scratch)}"
        )
    else:
        lines.append(f"final model: test accuracy {registration.test_accuracy:.3f} ({regime})")
    v = registration.version
    alias = "@champion (auto-promoted)" if registration.auto_promoted else "@challenger"
    if registration.experiment:
        alias = f"registered for DVC experiment {registration.experiment} (no alias moved)"
    versus = f"vs @champion v{registration.champion_version}" if registration.champion_version else "no @champion yet"
    lines.append(
        f"registry:    {registration.model_name} v{v} is {alias}; gate {registration.validation_status} ({versus})"
    )
    if registration.auto_promoted:
        lines.append('next:        make status   (make rollback REASON="..." undoes the promotion)')
    elif registration.validation_status == "failed":  # promote re-runs the gate and refuses without FORCE
        lines.append(
            f'next:        make review   then, to promote it anyway, make promote VERSION={v} REASON="..." FORCE=1'
        )
    else:
        lines.append(f'next:        make review   then   make promote VERSION={v} REASON="..."')
    return lines


def read_evaluation(eval_dir: Path):
    """Evaluate's metrics, or None when its file is missing or of another layout (the rest still reports)."""
    from tlpipe.errors import DataError

    try:
        return EvalMetrics.read(eval_dir)
    except DataError:
        return None


def pipeline_outcome(run: TrainedModel, challenger: dict, eval_dir: Path) -> dict:
    """What the pipeline run shows in the runs table: final and baseline test metrics, the chosen params."""
    metrics = {"test_accuracy": challenger["accuracy"], "test_macro_f1": challenger["macro_f1"]}
    evaluation = read_evaluation(eval_dir)
    if evaluation is not None:
        metrics["test_accuracy_ci95_low"], metrics["test_accuracy_ci95_high"] = evaluation.accuracy_ci95
        for name, block in (("frozen_features", evaluation.frozen_features), ("scratch", evaluation.scratch)):
            if block.get("accuracy") is not None:
                metrics[f"baseline_{name}_test_accuracy"] = float(block["accuracy"])
    hp = run.hyperparameters
    chosen = {
        "regime": hp.regime,
        "freeze_ratio": f"{hp.freeze_ratio:.3g}",
        "learning_rate": f"{hp.learning_rate:.3g}",
        "dropout": f"{hp.dropout:.3g}",
        "head_units": str(hp.head_units),
        "backbone": run.backbone,
    }
    return {"metrics": metrics, "params": chosen}
