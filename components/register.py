"""register: the fine-tuned model becomes a registry version with its evidence, `@challenger`, and a gate.

The current `@champion` (if any) is scored on this run's test split next to the challenger, so the two
numbers always come from the same images. MLflow's `MetricThreshold` / `validate_evaluation_results` decide
`validation_status` (passed / failed, with reasons) from `registry.*`. The step never moves `@champion`
unless `registry.auto_promote: true` and the gate passed. Running it again for the same training run reuses
the version it made. The evidence (both score sets, confusion matrices, the challenger's mistakes, tuning
summary, lineage) is logged to the step's MLflow run, where `components.review` finds it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from components.cli import atomic_dir, params_from, parser, run_main
from components.common import read_json, write_json
from components.config import Params, RegistryConfig
from components.errors import PipelineError


def test_set_id(subset: Path) -> str:
    """A sha256 over the test split's file hashes: two scores are comparable only when these match."""
    from components.datasets import read_manifest

    manifest = read_manifest(subset)
    files = sorted(manifest.loc[manifest["split"] == "test", "sha256"])
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def score_model(model, subset: Path, classes: list[str]) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Test-split scores of a Keras model at its own input size, with its predictions, images and labels."""
    from components.datasets import load_split
    from components.evaluate import scores

    size = int(model.inputs[0].shape[1])
    images, labels, found = load_split(subset, "test", size)
    if list(found) != list(classes):
        raise PipelineError(f"the model predicts classes {classes} but the test split has {found}; "
                            "the two cannot be compared")
    probs = np.asarray(model.predict(images.astype("float32"), verbose=0))
    return scores(labels, probs, classes), probs.argmax(axis=1), images, labels


def gate(challenger: dict, champion: dict | None, cfg: RegistryConfig) -> tuple[str, list[str]]:
    """`passed` or `failed` with reasons, decided by MLflow's metric thresholds.

    Thresholds: accuracy >= min_accuracy; with a champion, the accuracy gain over it (same test set) >=
    min_improvement; with min_class_recall, every class's recall >= it.
    """
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    values = {"accuracy": challenger["accuracy"]}
    thresholds = {"accuracy": MetricThreshold(threshold=cfg.min_accuracy, greater_is_better=True)}
    if champion is not None:
        values["accuracy_gain_over_champion"] = challenger["accuracy"] - champion["accuracy"]
        thresholds["accuracy_gain_over_champion"] = MetricThreshold(threshold=cfg.min_improvement,
                                                                    greater_is_better=True)
    if cfg.min_class_recall is not None:
        for cls, row in challenger["per_class"].items():
            values[f"recall_{cls}"] = row["recall"]
            thresholds[f"recall_{cls}"] = MetricThreshold(threshold=cfg.min_class_recall, greater_is_better=True)
    try:
        mlflow.validate_evaluation_results(thresholds, EvaluationResult(values, {}, run_id=""))
    except ModelValidationFailedException as exc:
        return "failed", [line.strip() for line in exc.message.splitlines() if line.strip()]
    return "passed", []


def existing_version(client, name: str, run_id: str):
    """The version already registered from this training run, if any (re-running register reuses it)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get("training_run_id") == run_id:
            return version
    return None


def describe(run: dict, metrics: dict, status: str, champion: dict | None, champion_version: str | None,
             params: Params) -> str:
    """The version's one-paragraph description."""
    hp = run.get("hyperparameters", {})
    versus = (f"The champion (v{champion_version}) scores {champion['accuracy']:.3f} on the same test set."
              if champion else "There was no champion to compare with.")
    return (f"{params.model.backbone} backbone fine-tuned with freeze ratio {hp.get('freeze_ratio', 0):.3g} "
            f"({run['freeze']['frozen']}/{run['freeze']['total']} layers frozen) and learning rate "
            f"{hp.get('learning_rate', 0):.3g} on {len(run['classes'])} classes ({', '.join(run['classes'])}). "
            f"Test accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f} on "
            f"{sum(r['support'] for r in metrics['per_class'].values())} images. {versus} "
            f"Gate: {status}.")


def version_tags(run: dict, metrics: dict, status: str, reasons: list[str], lineage: dict,
                 params: Params, study: str) -> dict[str, str]:
    """What a reviewer filters on: code, data, gate, metrics and the hyperparameters."""
    hp = run.get("hyperparameters", {})
    tags = {"training_run_id": run["run_id"], "validation_status": status,
            "validation_reasons": " | ".join(reasons) or "all thresholds met",
            "test_accuracy": f"{metrics['accuracy']:.4f}", "test_macro_f1": f"{metrics['macro_f1']:.4f}",
            "test_loss": f"{metrics['loss']:.4f}", "test_set_sha256": lineage["test_set_sha256"],
            "backbone": params.model.backbone, "weights": params.model.weights,
            "freeze_ratio": str(hp.get("freeze_ratio")), "learning_rate": str(hp.get("learning_rate")),
            "tuning_study": study, "classes": json.dumps(run["classes"]), "git_commit": lineage["git_commit"],
            "data_validation": lineage["validation"].get("status", "unknown")}
    tags.update({f"data.{k}": v for k, v in lineage["dvc_lock"].items()})
    return tags


def lineage(subset: Path, validation: Path | None) -> dict:
    """Git commit, dvc.lock hashes, subset sizes per class and split, validation summary, test-set id."""
    from components.datasets import read_manifest
    from components.tracking import dvc_lock_hashes, git_commit

    manifest = read_manifest(subset)
    sizes = manifest.groupby(["split", "class"]).size()
    result = read_json(validation) if validation and validation.is_file() else {}
    return {"git_commit": git_commit(), "test_set_sha256": test_set_id(subset),
            "dvc_lock": dvc_lock_hashes(["data/subset", "data/features", "models/backbone.keras",
                                         "models/head.keras", "data/validation.json"]),
            "subset_sizes": {s: {c: int(n) for c, n in sizes[s].items()} for s in sizes.index.levels[0]},
            "validation": {"status": "passed" if result.get("success") else ("failed" if result else "unknown"),
                           **{k: v for k, v in result.items() if k != "success"}}}


def evidence(out: Path, challenger: dict, champion: dict | None, images_wrong: tuple, classes: list[str],
             tune_dir: Path | None, eval_dir: Path | None) -> None:
    """Plots and files the review shows: both confusion matrices, the mistakes grid, tuning, evaluate."""
    from components.evaluate import plot_confusion, plot_samples

    plot_confusion(np.array(challenger["confusion"]), classes, out / "confusion_challenger.png", "challenger")
    if champion is not None:
        plot_confusion(np.array(champion["confusion"]), classes, out / "confusion_champion.png", "champion")
    images, truth, guess = images_wrong
    if len(images):
        plot_samples(images, truth, guess, classes, out / "mistakes.png", 32,
                     title=f"challenger mistakes on the test split ({len(images)} shown)")
    for folder, name in ((tune_dir, "tune"), (eval_dir, "evaluate")):
        if folder and folder.is_dir():
            shutil.copytree(folder, out / name, ignore=shutil.ignore_patterns(".*"))


def register(params: Params, model_dir: Path, subset: Path, validation: Path | None, tune_dir: Path | None,
             eval_dir: Path | None, work: Path) -> dict:
    """Score, gate, register (or reuse) the version, set `@challenger`; returns the registration summary."""
    from components.registry import CHAMPION, alias_version, connect, load_version_model, promote

    cfg = params.registry
    client = connect(params)  # fails here, before anything is written (or TensorFlow loads), when it is down
    import keras

    import components.augment  # noqa: F401 - registers the custom augmentation layer for deserialization

    run = read_json(model_dir / "run.json")
    classes = run["classes"]
    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    challenger, predicted, images, labels = score_model(model, subset, classes)
    champ = alias_version(client, cfg.model_name, CHAMPION)
    champion = None
    if champ is not None and champ.tags.get("training_run_id") != run["run_id"]:
        champion_model, champion_classes = load_version_model(client, cfg.model_name, champ)
        champion = score_model(champion_model, subset, champion_classes)[0]
    status, reasons = gate(challenger, champion, cfg)
    facts = lineage(subset, validation)
    wrong = np.flatnonzero(predicted != labels)[:32]
    evidence(work, challenger, champion, (images[wrong], labels[wrong], predicted[wrong]), classes, tune_dir,
             eval_dir)
    best_file = tune_dir / "best_params.json" if tune_dir else None
    study = read_json(best_file).get("study_name", "") if best_file and best_file.is_file() else ""
    summary = {"model_name": cfg.model_name, "validation_status": status, "reasons": reasons,
               "challenger": challenger, "champion": champion,
               "champion_version": champ.version if champion is not None else None,
               "test_set_sha256": facts["test_set_sha256"], "training_run_id": run["run_id"],
               "thresholds": cfg.model_dump()}
    write_json(work / "gate.json", summary)
    write_json(work / "lineage.json", facts)
    tags = version_tags(run, challenger, status, reasons, facts, params, study)
    description = describe(run, challenger, status, champion, summary["champion_version"], params)
    version, reused = _record(client, params, run, work, tags, description, model_dir, subset, validation)
    promoted = False
    if cfg.auto_promote and status == "passed":
        current = alias_version(client, cfg.model_name, CHAMPION)
        if current is None or current.version != version.version:
            promote(client, cfg.model_name, version.version, "auto_promote: the gate passed")
            promoted = True
    return {"model_name": cfg.model_name, "version": str(version.version), "reused": reused,
            "validation_status": status, "reasons": reasons, "test_accuracy": challenger["accuracy"],
            "champion_version": summary["champion_version"],
            "champion_test_accuracy": champion["accuracy"] if champion else None,
            "auto_promoted": promoted, "register_run_id": tags["register_run_id"],
            "test_set_sha256": facts["test_set_sha256"]}


def _record(client, params: Params, run: dict, work: Path, tags: dict, description: str, model_dir: Path,
            subset: Path, validation: Path | None):
    """The registry writes: evidence on a `register` run, the version (new or reused), its tags and alias.

    Returns:
        The model version and whether it already existed.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.registry import CHALLENGER
    from components.tracking import step_run

    name = params.registry.model_name
    inputs = {"subset": str(subset), "model": str(model_dir / "model.keras")}
    try:
        with step_run(params, "register", inputs, str(validation) if validation else None) as step:
            mlflow.log_artifacts(str(work), "evidence")
            mlflow.log_metric("test_accuracy", float(tags["test_accuracy"]))
            tags["register_run_id"] = step.info.run_id
            version = existing_version(client, name, run["run_id"])
            reused = version is not None
            if version is None:
                version = mlflow.register_model(run["model_uri"], name, tags=tags)
            else:
                for key, value in tags.items():
                    client.set_model_version_tag(name, version.version, key, value)
            client.update_model_version(name, version.version, description)
            client.set_registered_model_alias(name, CHALLENGER, version.version)
            mlflow.set_tags({"registered_version": version.version, "validation_status": tags["validation_status"]})
    except MlflowException as exc:
        raise PipelineError(f"MLflow registry at {client.tracking_uri}: {str(exc).splitlines()[0][:300]}") from None
    return version, reused


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.register --model-dir ... --subset ... --out ...`."""
    import tempfile

    p = parser("register", __doc__)
    p.add_argument("--model-dir", required=True, help="fine_tune's output folder (model.keras, run.json)")
    p.add_argument("--subset", required=True, help="make_subset's folder (the test split both models are scored on)")
    p.add_argument("--validation", help="validate_data's result")
    p.add_argument("--tune-dir", help="tune's report folder (best_params.json and plots)")
    p.add_argument("--eval-dir", help="evaluate's report folder")
    p.add_argument("--out", required=True, help="folder for registration.json")
    args = p.parse_args(argv)
    params = params_from(args)
    opt = (lambda value: Path(value) if value else None)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="register-") as work:
        result = register(params, Path(args.model_dir), Path(args.subset), opt(args.validation),
                          opt(args.tune_dir), opt(args.eval_dir), Path(work))
    with atomic_dir(args.out) as staged:
        write_json(staged / "registration.json", result)
    verb = "reused" if result["reused"] else "registered"
    versus = (f" vs champion v{result['champion_version']} {result['champion_test_accuracy']:.3f}"
              if result["champion_version"] else " (no champion yet)")
    print(f"register: {verb} {result['model_name']} v{result['version']} @challenger, test accuracy "
          f"{result['test_accuracy']:.3f}{versus}: gate {result['validation_status']}"
          + (f" ({'; '.join(result['reasons'])})" if result["reasons"] else "")
          + ("; auto-promoted to @champion" if result["auto_promoted"] else ""))


if __name__ == "__main__":
    run_main(main)
