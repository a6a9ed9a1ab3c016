"""The registry gate and the words a model version carries (its description and tags).

`components/register.py` applies them when it registers a model; `operators/review.py` re-runs the gate
against today's `@champion` before a promotion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from tlpipe.contracts import TrainedModel
from tlpipe.sections import RegistryConfig


def gate(
    challenger: dict, champion: dict | None, cfg: RegistryConfig, comparison: dict | None = None
) -> tuple[Literal["passed", "failed"], list[str]]:
    """`passed` or `failed` with reasons, decided by MLflow's metric thresholds.

    Thresholds: accuracy >= min_accuracy; with a champion, the accuracy gain over it (same test set) >=
    min_improvement; with min_class_recall, every class's recall >= it. With `require_significant` and a
    champion, the lower bound of the gain's paired 95% CI (`comparison`) must also exceed min_improvement.
    """
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    values = {"accuracy": challenger["accuracy"]}
    thresholds = {"accuracy": MetricThreshold(threshold=cfg.min_accuracy, greater_is_better=True)}
    if champion is not None:
        # On the test images neither model trained on (comparison["gain"]) when the pairing was made.
        values["accuracy_gain_over_champion"] = (
            comparison["gain"] if comparison and "gain" in comparison else challenger["accuracy"] - champion["accuracy"]
        )
        thresholds["accuracy_gain_over_champion"] = MetricThreshold(
            threshold=cfg.min_improvement, greater_is_better=True
        )
    if cfg.min_class_recall is not None:
        for cls, row in challenger["per_class"].items():
            values[f"recall_{cls}"] = row["recall"]
            thresholds[f"recall_{cls}"] = MetricThreshold(threshold=cfg.min_class_recall, greater_is_better=True)
    reasons = []
    try:
        mlflow.validate_evaluation_results(thresholds, EvaluationResult(values, {}, run_id=""))
    except ModelValidationFailedException as exc:
        reasons = [line.strip() for line in exc.message.splitlines() if line.strip()]
    if cfg.require_significant and comparison is not None and comparison["gain_ci95"][0] <= cfg.min_improvement:
        low, high = comparison["gain_ci95"]
        reasons.append(
            f"the gain's 95% CI [{100 * low:+.1f}, {100 * high:+.1f}] points does not lie above "
            f"min_improvement ({100 * cfg.min_improvement:+.1f} points): the test set cannot show the "
            "challenger beats the champion by more than that (registry.require_significant)"
        )
    return ("failed" if reasons else "passed"), reasons


def baseline_reasons(cfg: RegistryConfig, eval_dir: Path) -> list[str]:
    """With `refuse_worse_than_baseline`: why the model fails when its best baseline beats it significantly.

    The baseline is evaluate's `vs_best_baseline` (chosen on validation, McNemar's exact test on the test images).
    """
    from tlpipe.contracts import EvalMetrics
    from tlpipe.reports.selection import describe as versus_line
    from tlpipe.reports.selection import significantly_worse

    if not cfg.refuse_worse_than_baseline:
        return []
    vs = EvalMetrics.read(eval_dir).vs_best_baseline
    if not significantly_worse(vs):
        return []
    return [f"{versus_line(vs)}: a baseline beats this model (registry.refuse_worse_than_baseline)"]


def describe(
    run: TrainedModel,
    metrics: dict,
    status: str,
    champion: dict | None,
    champion_version: str | None,
    comparison: dict | None = None,
) -> str:
    """The version's one-paragraph description."""
    hp = run.hyperparameters
    shared = (
        f"the {comparison['shared_test_images']} test images neither model trained on "
        f"({comparison['excluded_seen_by_champion']} left out: the champion trained on them)"
        if comparison and "shared_test_images" in comparison
        else "the same test set"
    )
    versus = (
        f"The champion (v{champion_version}) scores {champion['accuracy']:.3f} on {shared}."
        if champion
        else "There was no champion to compare with."
    )
    if comparison:
        low, high = comparison["gain_ci95"]
        versus += (
            f" The challenger fixes {comparison['fixed']} images and breaks {comparison['broken']} "
            f"(McNemar p = {comparison['mcnemar_p']:.2g}; gain 95% CI [{low:+.3f}, {high:+.3f}])."
        )
    return (
        f"Backbone {run.backbone[:40]} fine-tuned with freeze ratio {hp.freeze_ratio:.3g} "
        f"({run.freeze['frozen']}/{run.freeze['total']} layers frozen) and learning rate "
        f"{hp.learning_rate:.3g} on {len(run.classes)} classes ({', '.join(run.classes)}). "
        f"Test accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f} on "
        f"{sum(r['support'] for r in metrics['per_class'].values())} images. {versus} "
        f"Gate: {status}."
    )


def version_tags(
    run: TrainedModel,
    metrics: dict,
    status: str,
    reasons: list[str],
    lineage: dict,
    study: str,
    comparison: dict | None = None,
) -> dict[str, str]:
    """What a reviewer filters on: code, data, gate, paired comparison, metrics and the hyperparameters."""
    hp = run.hyperparameters
    tags = {
        "training_run_id": run.run_id,
        "validation_status": status,
        "validation_reasons": " | ".join(reasons) or "all thresholds met",
        "test_accuracy": f"{metrics['accuracy']:.4f}",
        "test_macro_f1": f"{metrics['macro_f1']:.4f}",
        "test_loss": f"{metrics['loss']:.4f}",
        "test_set_sha256": lineage["test_set_sha256"],
        "backbone": run.backbone,
        "freeze_ratio": str(hp.freeze_ratio),
        "learning_rate": str(hp.learning_rate),
        "regime": hp.regime,
        "tuning_study": study,
        "classes": json.dumps(run.classes),
        "git_commit": lineage["git_commit"],
        "chance_level": str(run.chance_level).lower(),
        "data_validation": lineage["validation"].get("status", "unknown"),
        "data_source": lineage["data_source"],
    }
    tags.update({f"data.{k}": v for k, v in lineage["dvc_lock"].items()})
    if comparison:
        tags.update(
            {
                "mcnemar_p": f"{comparison['mcnemar_p']:.4g}",
                "fixed_broken": f"{comparison['fixed']}/{comparison['broken']}",
                "accuracy_gain_ci95": "[{:.4f}, {:.4f}]".format(*comparison["gain_ci95"]),
            }
        )
    return tags
