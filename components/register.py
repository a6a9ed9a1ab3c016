"""register: the fine-tuned model becomes a registry version with its evidence, `@challenger`, and a gate.

The current `@champion` (if any) is scored on this run's test split next to the challenger, so both numbers
come from the same images; the paired comparison (McNemar's exact test on the images one model fixes and the
other breaks, a bootstrap 95% CI of the gain) says whether this test set can tell them apart. MLflow's
`MetricThreshold` / `validate_evaluation_results` decide `validation_status` (passed / failed, with reasons)
from `registry.*`; `registry.require_significant` also asks the gain's CI to lie above `min_improvement`, and
`registry.refuse_worse_than_baseline` fails a model significantly worse than evaluate's best baseline.
The step never moves `@champion` unless `registry.auto_promote: true` and the gate passed. Running it again
for the same training run reuses the version it made. The evidence (both score sets, the comparison,
confusion matrices, the challenger's mistakes, tuning summary, lineage) is logged to the step's MLflow run,
where `operators.review` finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tlpipe.cli import parser, run_main, step_params
from tlpipe.contracts import MODEL_FILE, BestParams, Registration, TrainedModel
from tlpipe.contracts.evidence import EVIDENCE
from tlpipe.errors import PipelineError
from tlpipe.fs import atomic_dir, scratch_dir
from tlpipe.reports.champion import score_model, test_images, versus_champion, write_predictions
from tlpipe.reports.diff import write_image_ids
from tlpipe.reports.gate import baseline_reasons, describe, gate, version_tags
from tlpipe.reports.review import write_evidence
from tlpipe.reports.summary import pipeline_outcome
from tlpipe.sections import RegistryConfig
from tlpipe.tracking import registry as registry_lib
from tlpipe.tracking.lineage import subset_lineage

PARAMS = ("registry",)


def register(
    cfg: RegistryConfig,
    params,
    model_dir: Path,
    subset: Path,
    validation: Path,
    tune_dir: Path,
    eval_dir: Path,
    work: Path,
) -> Registration:
    """Score, compare, gate, register (or reuse) the version, set `@challenger`; returns the registration."""
    from tlpipe.tracking.registry import CHAMPION, alias_version, connect, promote

    client = connect(params)  # fails here, before anything is written (or TensorFlow loads), when it is down
    import keras

    import tlpipe.data.augmentation  # noqa: F401 - registers the custom augmentation layer for deserialization

    run = TrainedModel.read(model_dir)
    classes = run.classes
    model = keras.saving.load_model(model_dir / MODEL_FILE, safe_mode=True)
    challenger, probs, images, labels = score_model(model, subset, classes)
    predicted = probs.argmax(axis=1)
    champion_version, champion, comparison = versus_champion(
        client, cfg.model_name, run.run_id, run.classes, subset, predicted, labels
    )
    status, reasons = gate(challenger, champion, cfg, comparison)
    worse = baseline_reasons(cfg, eval_dir)
    if worse:
        status, reasons = "failed", [*reasons, *worse]
    if run.chance_level:  # fine_tune flagged it: a model that learned nothing never passes, whatever the floor
        status, reasons = "failed", [*reasons, "the model is at chance level (fine_tune flagged it)"]
    facts = subset_lineage(subset, validation, [str(subset), str(model_dir), str(validation)], run.backbone)
    summary = {
        "model_name": cfg.model_name,
        "validation_status": status,
        "reasons": reasons,
        "challenger": challenger,
        "champion": champion,
        "champion_version": champion_version,
        "comparison": comparison,
        "test_set_sha256": facts["test_set_sha256"],
        "training_run_id": run.run_id,
        "thresholds": cfg.model_dump(),
    }
    wrong = np.flatnonzero(predicted != labels)[:32]
    write_evidence(work, summary, facts, (images[wrong], labels[wrong], predicted[wrong]), classes, tune_dir, eval_dir)
    write_predictions(work, labels, probs, classes, facts["test_set_sha256"], test_images(subset))
    write_image_ids(work, subset)
    study = BestParams.read(tune_dir).study_name
    tags = version_tags(run, challenger, status, reasons, facts, study, comparison)
    description = describe(run, challenger, status, champion, champion_version, comparison)
    experiment = os.environ.get("DVC_EXP_NAME", "")  # set by `dvc exp run`: an experiment, not a release
    version, reused = _record(
        client,
        params,
        run,
        work,
        tags,
        description,
        model_dir,
        subset,
        validation,
        images[:2],
        pipeline_outcome(run, challenger, eval_dir),
        experiment,
    )
    promoted = False
    if cfg.auto_promote and status == "passed" and not experiment:
        current = alias_version(client, cfg.model_name, CHAMPION)
        if version is not None and (current is None or current.version != version.version):
            promote(client, cfg.model_name, version.version, "auto_promote: the gate passed")
            promoted = True
    return Registration(
        model_name=cfg.model_name,
        version=str(version.version) if version else "",
        reused=reused,
        validation_status=status,
        reasons=reasons,
        test_accuracy=challenger["accuracy"],
        champion_version=champion_version,
        champion_test_accuracy=champion["accuracy"] if champion else None,
        auto_promoted=promoted,
        register_run_id=tags["register_run_id"],
        test_set_sha256=facts["test_set_sha256"],
        comparison=comparison,
        experiment=experiment,
    )


def _record(
    client,
    params,
    run: TrainedModel,
    work: Path,
    tags: dict,
    description: str,
    model_dir: Path,
    subset: Path,
    validation: Path,
    examples: np.ndarray,
    result: dict,
    experiment: str = "",
):
    """The registry writes: evidence on a `register` run, the version (new or reused), its tags and alias.

    In a DVC experiment (`experiment`: its name) no alias moves, and with `registry.experiments: log` no version
    is made either (the evidence and the gate's decision stay on the register run, tagged `dvc_experiment`).

    A new version is the serving model (tlpipe.tracking.serving: images in, labels out) logged on the
    register run, with `examples` (test images) as its input example.

    Returns:
        The model version and whether it already existed.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from tlpipe.redact import redact
    from tlpipe.tracking.registry import CHALLENGER
    from tlpipe.tracking.runs import record_outcome, step_run
    from tlpipe.tracking.serving import log_image_model

    name = params.registry.model_name
    inputs = {"subset": str(subset), "model": str(model_dir / MODEL_FILE)}
    try:
        with step_run(params, "register", inputs, str(validation)) as step:
            mlflow.log_artifacts(str(work), EVIDENCE)
            mlflow.log_metric("test_accuracy", float(tags["test_accuracy"]))
            tags["register_run_id"] = step.info.run_id
            if experiment:
                mlflow.set_tag("dvc_experiment", experiment)
                tags["dvc_experiment"] = experiment
                if params.registry.experiments == "log":
                    mlflow.set_tags({"registered_version": "none", "validation_status": tags["validation_status"]})
                    return None, False
            version = registry_lib.existing_version(client, name, run.run_id)
            reused = version is not None
            if version is None:
                served = log_image_model(model_dir / MODEL_FILE, run.classes, int(examples.shape[1]), examples)
                version = mlflow.register_model(served.model_uri, name, tags=tags)
            else:
                for key, value in tags.items():
                    client.set_model_version_tag(name, version.version, key, value)
            client.update_model_version(name, version.version, description)
            if not experiment:
                client.set_registered_model_alias(name, CHALLENGER, version.version)
            mlflow.set_tags({"registered_version": version.version, "validation_status": tags["validation_status"]})
            parent = mlflow.get_run(step.info.run_id).data.tags.get("mlflow.parentRunId")
            if parent:
                record_outcome(
                    parent,
                    result["metrics"],
                    result["params"],
                    {
                        "registered_model": f"{name} v{version.version} @challenger",
                        "registered_version": version.version,
                        "validation_status": tags["validation_status"],
                    },
                )
    except MlflowException as exc:
        first = str(exc).splitlines()[0][:300]
        raise PipelineError(f"MLflow registry at {redact(client.tracking_uri)}: {first}") from None
    return version, reused


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m components.register --model ... --evaluation ... --subset ... --registration ...`."""
    p = parser("register", __doc__)
    p.add_argument("--model", required=True, help="fine_tune's folder (model.keras, run.json)")
    p.add_argument("--evaluation", required=True, help="evaluate's folder")
    p.add_argument("--subset", required=True, help="make_subset's folder (the test split both models are scored on)")
    p.add_argument("--validation", required=True, help="validate_data's result")
    p.add_argument("--tuning", required=True, help="tune's folder (best_params.json and plots)")
    p.add_argument("--registration", required=True, help="folder for registration.json")
    args = p.parse_args(argv)
    params = step_params(args, "register", PARAMS)
    with scratch_dir("register") as work:
        result = register(
            params.registry,
            params,
            Path(args.model),
            Path(args.subset),
            Path(args.validation),
            Path(args.tuning),
            Path(args.evaluation),
            Path(work),
        )
    with atomic_dir(args.registration) as staged:
        result.write(staged)
    if result.experiment and not result.version:
        print(
            f"register: experiment {result.experiment}: test accuracy {result.test_accuracy:.3f}, gate "
            f"{result.validation_status}; not registered (registry.experiments: log). To register it: "
            f"`dvc exp apply {result.experiment}` then `dvc repro --force --single-item register`"
        )
        return
    verb = "reused" if result.reused else "registered"
    versus = (
        f" vs champion v{result.champion_version} {result.champion_test_accuracy:.3f}"
        if result.champion_version
        else " (no champion yet)"
    )
    alias = f"(experiment {result.experiment}, no alias)" if result.experiment else "@challenger"
    print(
        f"register: {verb} {result.model_name} v{result.version} {alias}, test accuracy "
        f"{result.test_accuracy:.3f}{versus}: gate {result.validation_status}"
        + (f" ({'; '.join(result.reasons)})" if result.reasons else "")
        + ("; auto-promoted to @champion" if result.auto_promoted else "")
    )


if __name__ == "__main__":
    run_main(main)
