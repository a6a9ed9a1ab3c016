"""KFP lightweight Python components, one per step: each calls the step's own `main()` with artifact paths.

Lightweight components (not container components) because `kfp.local.SubprocessRunner` runs only those; the
same definitions then run on a cluster in the tlpipe image, which has the package installed. Bodies import
inside the function (KFP ships only the function's source), and go through `pipelines.runtime`.

Every task after `make_digits` takes `params`, the run's resolved params.yaml (typed pipeline parameters and
`params_overrides` merged once, so every step and its MLflow run see the same values). Folders are the
artifacts: a `dsl.Model` is a folder holding `<name>.keras`, a `dsl.Dataset` the step's output folder.
"""



from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

CPU_IMAGE = "ghcr.io/tlpipe/tlpipe:0.1.0"
GPU_IMAGE = "ghcr.io/tlpipe/tlpipe:0.1.0-gpu"


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def make_digits(data_source: str, backbone: str, image_size: int, train_per_class: int, pretrain_epochs: int,
                fine_tune_epochs: int, tune_n_trials: int, params_overrides: dict, data_fingerprint: str,
                digits: Output[Dataset], params: Output[Artifact]):
    """Resolve the run's params (`params` artifact), then write the embedded digits (source/, target/)."""
    import os

    from pipelines.runtime import PRETRAINED_BACKBONE, resolve_params, run_step

    typed = {"data.source": data_source or os.path.join(digits.path, "target"),
             "model.backbone": backbone or PRETRAINED_BACKBONE, "model.image_size": image_size,
             "make_subset.train_per_class": train_per_class, "pretrain_backbone.epochs": pretrain_epochs,
             "fine_tune.epochs": fine_tune_epochs, "tune.n_trials": tune_n_trials}
    resolve_params(params.path, typed, params_overrides)
    params.metadata["data_fingerprint"] = data_fingerprint
    run_step("make_digits", ["--out", digits.path], params.path)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pretrain_backbone(params: Input[Artifact], digits: Input[Dataset], backbone: Output[Model],
                      metrics: Output[Metrics], report: Output[Artifact]):
    """Train our own small backbone on the source classes."""
    import os

    from pipelines.runtime import BACKBONE_FILE, log_metrics, run_step

    run_step("pretrain_backbone", ["--source", os.path.join(digits.path, "source"),
                                   "--out", os.path.join(backbone.path, BACKBONE_FILE),
                                   "--report-dir", report.path], params.path)
    log_metrics(metrics, os.path.join(report.path, "metrics.json"))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def make_subset(params: Input[Artifact], data_fingerprint: str, subset: Output[Dataset]):
    """Read data.source (folder, zip or s3://) into train/val/test; data_fingerprint is for the cache key."""
    from pipelines.runtime import run_step

    run_step("make_subset", ["--out", subset.path], params.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_data(params: Input[Artifact], subset: Input[Dataset], validation: Output[Artifact],
                  report: Output[HTML]):
    """Check the subset's expectations; the task fails (and nothing downstream runs) if one fails."""
    import os
    import shutil
    import tempfile

    from pipelines.runtime import run_step

    report_dir = tempfile.mkdtemp(prefix="validate_data-")
    try:
        run_step("validate_data", ["--subset", subset.path, "--report-dir", report_dir,
                                   "--result", validation.path], params.path)
    finally:
        if os.path.isfile(os.path.join(report_dir, "report.html")):
            shutil.copyfile(os.path.join(report_dir, "report.html"), report.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def augment(params: Input[Artifact], subset: Input[Dataset], validation: Input[Artifact],
            preview: Output[Artifact], augmented: Output[Dataset]):
    """A preview grid and pre-augmented copies of the training split (for cached tuning trials)."""
    import os

    from pipelines.runtime import run_step

    run_step("augment", ["--subset", subset.path, "--preview", os.path.join(preview.path, "preview.png"),
                         "--copies", os.path.join(augmented.path, "train.npz")], params.path)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def extract_features(params: Input[Artifact], subset: Input[Dataset], validation: Input[Artifact],
                     backbone: Input[Model], features: Output[Dataset]):
    """Run the frozen backbone once over every split."""
    from pipelines.runtime import backbone_file, run_step

    run_step("extract_features", ["--subset", subset.path, "--out", features.path], params.path,
             backbone_file(params.path, backbone.path))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train_head(params: Input[Artifact], features: Input[Dataset], validation: Input[Artifact],
               head: Output[Model], metrics: Output[Metrics], report: Output[Artifact]):
    """Train the classifier head on the cached features."""
    import os

    from pipelines.runtime import HEAD_FILE, log_metrics, run_step

    run_step("train_head", ["--features", features.path, "--out", os.path.join(head.path, HEAD_FILE),
                            "--report-dir", report.path, "--validation", validation.path], params.path)
    log_metrics(metrics, os.path.join(report.path, "metrics.json"))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def tune_create_study(params: Input[Artifact], backbone: Input[Model], storage: str,
                      n_workers: int) -> list[int]:
    """Create the Optuna study (idempotent); returns the worker indices the ParallelFor fans out over."""
    from pipelines.runtime import backbone_file, run_step

    run_step("tune", ["create-study", "--storage", storage], params.path,
             backbone_file(params.path, backbone.path))
    return list(range(n_workers))


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def tune_worker(params: Input[Artifact], backbone: Input[Model], subset: Input[Dataset], head: Input[Model],
                augmented: Input[Dataset], storage: str, worker_index: int):
    """Take trials of the shared study until tune.n_trials have finished in total."""
    import os
    import tempfile

    from pipelines.runtime import HEAD_FILE, backbone_file, run_step

    run_step("tune", ["worker", "--subset", subset.path, "--head", os.path.join(head.path, HEAD_FILE),
                      "--augmented", os.path.join(augmented.path, "train.npz"), "--storage", storage,
                      "--worker-index", str(worker_index),
                      "--cache-dir", tempfile.mkdtemp(prefix="tune-cache-")],
             params.path, backbone_file(params.path, backbone.path))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def tune_summarize(params: Input[Artifact], backbone: Input[Model], storage: str, tune: Output[Artifact]):
    """The fan-in: best_params.json (what fine_tune reads) and the study's plots."""
    from pipelines.runtime import backbone_file, run_step

    run_step("tune", ["summarize", "--out", tune.path, "--storage", storage], params.path,
             backbone_file(params.path, backbone.path))


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def fine_tune(params: Input[Artifact], backbone: Input[Model], subset: Input[Dataset], head: Input[Model],
              tune: Input[Artifact], validation: Input[Artifact], model: Output[Model],
              metrics: Output[Metrics], report: Output[Artifact]):
    """Fine-tune backbone + head with the best tuned hyperparameters."""
    import os
    import tempfile

    from pipelines.runtime import HEAD_FILE, backbone_file, log_metrics, run_step

    run_step("fine_tune", ["--subset", subset.path, "--head", os.path.join(head.path, HEAD_FILE),
                           "--best-params", os.path.join(tune.path, "best_params.json"), "--out", model.path,
                           "--report-dir", report.path, "--workdir", tempfile.mkdtemp(prefix="fine_tune-"),
                           "--validation", validation.path],
             params.path, backbone_file(params.path, backbone.path))
    log_metrics(metrics, os.path.join(report.path, "metrics.json"))


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(params: Input[Artifact], subset: Input[Dataset], model: Input[Model], head: Input[Model],
             features: Input[Dataset], validation: Input[Artifact], evaluation: Output[Artifact],
             metrics: Output[Metrics], confusion: Output[ClassificationMetrics]):
    """Test-split scores; the same metrics.json numbers go to the KFP Metrics output."""
    import json
    import os

    from pipelines.runtime import HEAD_FILE, log_metrics, run_step

    run_step("evaluate", ["--subset", subset.path, "--model-dir", model.path,
                          "--head", os.path.join(head.path, HEAD_FILE), "--features", features.path,
                          "--out", evaluation.path, "--validation", validation.path], params.path)
    log_metrics(metrics, os.path.join(evaluation.path, "metrics.json"))
    with open(os.path.join(evaluation.path, "per_class.json"), encoding="utf-8") as fh:
        per_class = json.load(fh)
    confusion.log_confusion_matrix(per_class["classes"], per_class["confusion"])


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(params: Input[Artifact], model: Input[Model], evaluation: Input[Artifact],
             subset: Input[Dataset], validation: Input[Artifact], tune: Input[Artifact],
             registration: Output[Artifact]):
    """Register the fine-tuned model as a challenger if it passes the gate (registration.json says which)."""
    import json
    import os

    from pipelines.runtime import run_step

    run_step("register", ["--model-dir", model.path, "--eval-dir", evaluation.path,
                          "--subset", subset.path, "--validation", validation.path, "--tune-dir", tune.path,
                          "--out", registration.path], params.path)
    with open(os.path.join(registration.path, "registration.json"), encoding="utf-8") as fh:
        result = json.load(fh)
    registration.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, float))})
