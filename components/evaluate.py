"""evaluate: the final model and both baselines (frozen features, from scratch) on the same test split.

Writes `evaluation.json` (the EvalMetrics contract) with bootstrap 95% intervals and `metrics.json` (its numbers
only: what `dvc metrics` and `dvc exp show` compare),
per-class precision/recall/F1, a confusion matrix (PNG and a CSV for `dvc plots`), and a grid of test images
with truth and prediction. The candidates (final model, frozen features, scratch) are ranked on the validation
split; the best baseline so chosen is compared with the final model on the test images (`vs_best_baseline`:
name, delta, exact McNemar p), which `registry.refuse_worse_than_baseline` can gate on. When a baseline beats
the final model by more than one test image, or ranks first on validation, it says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import (
    CONFUSION_CSV,
    CONFUSION_PNG,
    HEAD_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SAMPLES_PNG,
    Candidate,
    EvalMetrics,
    TrainedModel,
    candidate_words,
    write_json,
)
from tlpipe.contracts.evidence import PerClassReport
from tlpipe.errors import PipelineError
from tlpipe.fs import atomic_dir
from tlpipe.reports.evaluation import bootstrap_ci, scores, spread, write_confusion_csv
from tlpipe.reports.plots import plot_confusion, plot_samples
from tlpipe.reports.selection import FINAL, best_baseline, describe, rank, versus

PARAMS = ("evaluate", "seed", "model.image_size")


def evaluate(
    labels: np.ndarray,
    probs: np.ndarray,
    head_probs: np.ndarray,
    y_head: np.ndarray,
    classes: list[str],
    seed: int,
    scratch_probs: np.ndarray | None = None,
    regime: str = "transfer",
    validation: dict[str, dict] | None = None,
    handed_on: Candidate = "fine_tune",
) -> tuple[EvalMetrics, dict, dict]:
    """Metrics of the final model (with bootstrap CIs) and of the baselines, and how it fares against the best.

    The best baseline is the one ranked highest on the validation split (`validation`: candidate name ->
    {"accuracy", "loss"} for "final", "frozen_features" and "scratch"); the test split then measures the final
    model against it (McNemar's exact test on the same images). Without `validation` the baselines are ranked
    on test, which the metrics file says (`best_baseline_chosen_on`).
    """
    if not np.array_equal(np.asarray(y_head), np.asarray(labels)):
        raise PipelineError(
            "the frozen-features test split (extract_features) and the test images hold different "
            "labels or order; rerun extract_features so both come from the same subset"
        )
    fine = scores(labels, probs, classes)
    frozen = scores(y_head, head_probs, classes)
    y_pred = probs.argmax(axis=1)
    keys = ("accuracy", "loss", "macro_f1")
    predictions = {"frozen_features": head_probs.argmax(axis=1)}
    scratch = {}
    if scratch_probs is not None:
        scratch = {k: v for k, v in scores(labels, scratch_probs, classes).items() if k in keys}
        scratch["accuracy_ci95"] = bootstrap_ci(labels, scratch_probs.argmax(axis=1), "accuracy", seed)
        predictions["scratch"] = scratch_probs.argmax(axis=1)
    if validation:
        ranked = {k: v for k, v in validation.items() if k == FINAL or k in predictions}
        chosen_on = "validation"
    else:
        ranked = {k: {"accuracy": float(np.mean(v == labels)), "loss": 0.0} for k, v in predictions.items()}
        chosen_on = "test"
    best = best_baseline(ranked)
    vs = versus(best, labels, y_pred, predictions[best])
    metrics = EvalMetrics(
        accuracy=fine["accuracy"],
        loss=fine["loss"],
        macro_f1=fine["macro_f1"],
        accuracy_ci95=bootstrap_ci(labels, y_pred, "accuracy", seed),
        macro_f1_ci95=bootstrap_ci(labels, y_pred, "macro_f1", seed),
        frozen_features={k: frozen[k] for k in keys},
        scratch=scratch,
        fine_tune_gain=fine["accuracy"] - frozen["accuracy"],
        test_images=int(len(labels)),
        regime=regime,
        handed_on=handed_on,
        best_baseline=best,
        final_minus_best_baseline=vs["delta"],
        baseline_won=vs["delta"] < -1.0 / max(len(labels), 1) - 1e-9,
        vs_best_baseline=vs,
        best_baseline_chosen_on=chosen_on,
        validation=validation or {},
        best_on_validation=rank(validation)[0] if validation else "",
    )
    return metrics, fine, frozen


def validation_scores(
    model, head, scratch_model, subset: Path, features: Path, size: int, classes: list[str]
) -> dict[str, dict]:
    """Validation accuracy and loss of the final model and both baselines: the split candidates are ranked on."""
    from tlpipe.contracts import features_file
    from tlpipe.data.datasets import load_split

    images, labels, _ = load_split(subset, "val", size)
    val = np.load(features / features_file("val"))
    out = {}
    for name, net, x, y in (
        (FINAL, model, images.astype("float32"), labels),
        ("frozen_features", head, val["features"], val["labels"]),
        ("scratch", scratch_model, images.astype("float32"), labels),
    ):
        found = scores(y, np.asarray(net.predict(x, verbose=0)), classes)
        out[name] = {"accuracy": found["accuracy"], "loss": found["loss"]}
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.evaluate --subset ... --model ... --head ... --features ... --evaluation ...`."""
    import keras

    from tlpipe.contracts import features_file
    from tlpipe.data.datasets import load_split
    from tlpipe.tracking.runs import step_run

    p = parser("evaluate", __doc__)
    p.add_argument("--subset", required=True, help="folder written by make_subset (test split)")
    p.add_argument("--validation", required=True, help="validate_data's result, tagged on the MLflow run")
    p.add_argument("--model", required=True, help="fine_tune's folder")
    p.add_argument("--head", required=True, help="train_head's folder (frozen-features baseline)")
    p.add_argument("--features", required=True, help="extract_features' folder (test features)")
    p.add_argument("--baseline", required=True, help="train_scratch's folder (the from-scratch baseline)")
    p.add_argument("--evaluation", required=True, help="folder for evaluation.json, metrics.json and the plots")
    args = p.parse_args(argv)
    params = step_params(args, "evaluate", PARAMS)
    trained = TrainedModel.read(args.model)
    inputs = {"subset": args.subset, "model": str(Path(args.model) / MODEL_FILE)}
    with step_run(params, "evaluate", inputs, args.validation):
        import mlflow

        model = keras.saving.load_model(Path(args.model) / MODEL_FILE, safe_mode=True)
        images, labels, classes = load_split(Path(args.subset), "test", params.model.image_size)
        probs = np.asarray(model.predict(images.astype("float32"), verbose=0))
        head = keras.saving.load_model(Path(args.head) / HEAD_FILE, safe_mode=True)
        test = np.load(Path(args.features) / features_file("test"))
        head_probs = np.asarray(head.predict(test["features"], verbose=0))
        scratch_model = keras.saving.load_model(Path(args.baseline) / MODEL_FILE, safe_mode=True)
        scratch_probs = np.asarray(scratch_model.predict(images.astype("float32"), verbose=0))
        validation = validation_scores(
            model, head, scratch_model, Path(args.subset), Path(args.features), params.model.image_size, classes
        )
        metrics, fine, frozen = evaluate(
            labels,
            probs,
            head_probs,
            test["labels"],
            classes,
            params.seed,
            scratch_probs,
            trained.hyperparameters.regime,
            validation,
            trained.selected,
        )
        y_pred = probs.argmax(axis=1)
        with atomic_dir(args.evaluation) as staged:
            metrics.write(staged)
            write_json(staged / METRICS_FILE, metrics.numbers())
            PerClassReport(
                fine_tune=fine["per_class"],
                frozen_features=frozen["per_class"],
                confusion=fine["confusion"],
                classes=classes,
            ).write(staged)
            write_confusion_csv(labels, y_pred, classes, staged / CONFUSION_CSV)
            plot_confusion(np.array(fine["confusion"]), classes, staged / CONFUSION_PNG, "fine_tune, test split")
            pick = spread(labels, params.evaluate.grid_samples, params.seed)
            plot_samples(
                images[pick], labels[pick], y_pred[pick], classes, staged / SAMPLES_PNG, params.evaluate.grid_samples
            )
        mlflow.set_tag("evaluated_run_id", trained.run_id)
        mlflow.log_metrics(
            {
                "test_accuracy": metrics.accuracy,
                "test_loss": metrics.loss,
                "test_macro_f1": metrics.macro_f1,
                "frozen_test_accuracy": frozen["accuracy"],
                "scratch_test_accuracy": metrics.scratch["accuracy"],
                "fine_tune_gain": metrics.fine_tune_gain,
                "vs_best_baseline_delta": metrics.vs_best_baseline["delta"],
                "vs_best_baseline_mcnemar_p": metrics.vs_best_baseline["mcnemar_p"],
            }
        )
        mlflow.set_tag("vs_best_baseline", metrics.vs_best_baseline["name"])
        mlflow.log_artifacts(args.evaluation)
        mlflow.MlflowClient().log_metric(trained.run_id, "test_accuracy", metrics.accuracy)
    low, high = metrics.accuracy_ci95
    print(
        f"evaluate: test accuracy {metrics.accuracy:.3f} (95% CI {low:.3f}-{high:.3f}, {metrics.regime}) vs "
        f"frozen features {frozen['accuracy']:.3f} and from scratch {metrics.scratch['accuracy']:.3f} "
        f"({len(labels)} images) -> {args.evaluation}"
    )
    if metrics.handed_on != "fine_tune":
        print(
            f"evaluate: the final model is the {candidate_words(metrics.handed_on)}, chosen by fine_tune on validation"
        )
    print(f"evaluate: vs best baseline {describe(metrics.vs_best_baseline)}")
    if metrics.best_on_validation not in ("", FINAL):
        print(
            f"evaluate: WARNING: the {metrics.best_on_validation} baseline scored higher than the final model on "
            "the validation split; the review shows it",
            flush=True,
        )
    if metrics.baseline_won:
        print(
            f"evaluate: WARNING: the {metrics.best_baseline} baseline beats the final model by "
            f"{-metrics.final_minus_best_baseline:.3f} ({-metrics.final_minus_best_baseline * len(labels):.0f} test "
            "images); the review shows it",
            flush=True,
        )


if __name__ == "__main__":
    run_main(main)
