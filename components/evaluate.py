"""evaluate: the final model and both baselines (frozen features, from scratch) on the same test split.

Writes `metrics.json` (what `dvc metrics show` displays and MLflow logs) with bootstrap 95% intervals,
per-class precision/recall/F1, a confusion matrix (PNG and a CSV for `dvc plots`), and a grid of test images
with truth and prediction. When a baseline beats the final model by more than one test image, it says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tlpipe.cli import atomic_dir, parser, run_main, step_params
from tlpipe.contracts import HEAD_FILE, MODEL_FILE, EvalMetrics, TrainedModel
from tlpipe.reports.evaluation import bootstrap_ci, scores, spread, write_confusion_csv
from tlpipe.reports.plots import plot_confusion, plot_samples

PARAMS = ("evaluate", "seed", "model.image_size")


def evaluate(labels: np.ndarray, probs: np.ndarray, head_probs: np.ndarray, y_head: np.ndarray, classes: list[str],
             seed: int, scratch_probs: np.ndarray | None = None,
             regime: str = "transfer") -> tuple[EvalMetrics, dict, dict]:
    """Metrics of the final model (with bootstrap CIs) and of the baselines, and which regime won."""
    fine = scores(labels, probs, classes)
    frozen = scores(y_head, head_probs, classes)
    y_pred = probs.argmax(axis=1)
    keys = ("accuracy", "loss", "macro_f1")
    baselines = {"frozen_features": frozen["accuracy"]}
    scratch = {}
    if scratch_probs is not None:
        scratch = {k: v for k, v in scores(labels, scratch_probs, classes).items() if k in keys}
        scratch["accuracy_ci95"] = bootstrap_ci(labels, scratch_probs.argmax(axis=1), "accuracy", seed)
        baselines["scratch"] = scratch["accuracy"]
    best = max(baselines, key=baselines.get)
    margin = fine["accuracy"] - baselines[best]
    metrics = EvalMetrics(
        accuracy=fine["accuracy"], loss=fine["loss"], macro_f1=fine["macro_f1"],
        accuracy_ci95=bootstrap_ci(labels, y_pred, "accuracy", seed),
        macro_f1_ci95=bootstrap_ci(labels, y_pred, "macro_f1", seed),
        frozen_features={k: frozen[k] for k in keys}, scratch=scratch,
        fine_tune_gain=fine["accuracy"] - frozen["accuracy"], test_images=int(len(labels)), regime=regime,
        best_baseline=best, final_minus_best_baseline=margin, baseline_won=margin < -1.0 / max(len(labels), 1) - 1e-9)
    return metrics, fine, frozen


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
    p.add_argument("--evaluation", required=True, help="folder for metrics.json and the plots")
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
        metrics, fine, frozen = evaluate(labels, probs, head_probs, test["labels"], classes, params.seed,
                                         scratch_probs, trained.hyperparameters.regime)
        y_pred = probs.argmax(axis=1)
        with atomic_dir(args.evaluation) as staged:
            metrics.write(staged)
            (staged / "per_class.json").write_text(json.dumps(
                {"fine_tune": fine["per_class"], "frozen_features": frozen["per_class"],
                 "confusion": fine["confusion"], "classes": classes}, indent=2) + "\n", encoding="utf-8")
            write_confusion_csv(labels, y_pred, classes, staged / "confusion.csv")
            plot_confusion(np.array(fine["confusion"]), classes, staged / "confusion.png", "fine_tune, test split")
            pick = spread(labels, params.evaluate.grid_samples, params.seed)
            plot_samples(images[pick], labels[pick], y_pred[pick], classes, staged / "samples.png",
                         params.evaluate.grid_samples)
        mlflow.set_tag("evaluated_run_id", trained.run_id)
        mlflow.log_metrics({"test_accuracy": metrics.accuracy, "test_loss": metrics.loss,
                            "test_macro_f1": metrics.macro_f1, "frozen_test_accuracy": frozen["accuracy"],
                            "scratch_test_accuracy": metrics.scratch["accuracy"],
                            "fine_tune_gain": metrics.fine_tune_gain})
        mlflow.log_artifacts(args.evaluation)
        mlflow.MlflowClient().log_metric(trained.run_id, "test_accuracy", metrics.accuracy)
    low, high = metrics.accuracy_ci95
    print(f"evaluate: test accuracy {metrics.accuracy:.3f} (95% CI {low:.3f}-{high:.3f}, {metrics.regime}) vs "
          f"frozen features {frozen['accuracy']:.3f} and from scratch {metrics.scratch['accuracy']:.3f} "
          f"({len(labels)} images) -> {args.evaluation}")
    if metrics.baseline_won:
        print(f"evaluate: WARNING: the {metrics.best_baseline} baseline beats the final model by "
              f"{-metrics.final_minus_best_baseline:.3f} ({-metrics.final_minus_best_baseline * len(labels):.0f} test "
              "images); the review shows it", flush=True)


if __name__ == "__main__":
    run_main(main)
