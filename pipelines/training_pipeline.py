"""The tlpipe training pipeline on Kubeflow Pipelines v2: the dvc.yaml stages as KFP tasks, same cores.

    python -m pipelines.training_pipeline compile [--output pipelines/training_pipeline.yaml]
    python -m pipelines.training_pipeline run-local [--workdir DIR] [--full] [--set KEY=VALUE ...]
    python -m pipelines.training_pipeline submit --host URL --experiment NAME [--namespace NS] [--wait]

Each task's display name is its step name (tune's three are `tune create-study`, `tune worker`, `tune
summarize`). Typed pipeline parameters take their defaults from params.yaml when compiling; any other key
goes in `params_overrides` (dotted keys, applied last). See pipelines/README.md.
"""

import argparse
import dataclasses
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kfp import compiler, dsl

from components.config import Params, load_params
from pipelines import tasks
from pipelines.fingerprint import data_fingerprint
from pipelines.platform import ClusterConfig, configure
from pipelines.runtime import PRETRAINED_BACKBONE

PIPELINE_NAME = "tlpipe-training"
DEFAULT_PACKAGE = Path("pipelines/training_pipeline.yaml")
EMBEDDED_SOURCE = "data/raw/digits/target"  # params.yaml's data.source = make_digits' output under dvc
DEFAULT_TUNING_WORKERS = 2
# run-local's default: the whole pipeline in a few minutes on two CPU cores.
SMALL_ARGUMENTS = {"image_size": 16, "train_per_class": 20, "pretrain_epochs": 2, "fine_tune_epochs": 2,
                   "tune_n_trials": 2, "n_tuning_workers": 2}
SMALL_OVERRIDES = {"make_subset.val_per_class": 8, "make_subset.test_per_class": 8, "train_head.epochs": 5,
                   "tune.epochs": 1, "tune.timeout": 120, "augment.copies": 1}


def typed_defaults(params: Params, cluster: ClusterConfig) -> dict[str, Any]:
    """Defaults of the typed pipeline parameters, read from params.yaml ("" = the embedded default)."""
    return {
        "data_source": "" if params.data.source == EMBEDDED_SOURCE else params.data.source,
        "backbone": "" if params.model.backbone == PRETRAINED_BACKBONE else params.model.backbone,
        "image_size": params.model.image_size,
        "train_per_class": params.make_subset.train_per_class,
        "pretrain_epochs": params.pretrain_backbone.epochs,
        "fine_tune_epochs": params.fine_tune.epochs,
        "tune_n_trials": params.tune.n_trials,
        "n_tuning_workers": DEFAULT_TUNING_WORKERS,
        "tune_storage": cluster.tune_storage,
    }


def build_pipeline(params: Params, cluster: ClusterConfig | None = None):
    """The pipeline function: parameter defaults from `params`, pod settings from `cluster`."""
    cluster = cluster or ClusterConfig()
    d = typed_defaults(params, cluster)

    class Outputs(NamedTuple):
        metrics: dsl.Metrics
        registration: dsl.Artifact

    @dsl.pipeline(name=PIPELINE_NAME, description="Transfer learning: pretrain, tune, fine-tune, register",
                  pipeline_root=cluster.pipeline_root or None)
    def training_pipeline(
        data_source: str = d["data_source"],
        backbone: str = d["backbone"],
        image_size: int = d["image_size"],
        train_per_class: int = d["train_per_class"],
        pretrain_epochs: int = d["pretrain_epochs"],
        fine_tune_epochs: int = d["fine_tune_epochs"],
        tune_n_trials: int = d["tune_n_trials"],
        n_tuning_workers: int = d["n_tuning_workers"],
        tune_storage: str = d["tune_storage"],
        params_overrides: dict = {},  # noqa: B006 - KFP reads the literal default; a fresh function per build
        data_fingerprint: str = "",
    ) -> Outputs:
        def step(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
            return configure(task, name, cluster)

        first = step(tasks.make_digits(
            data_source=data_source, backbone=backbone, image_size=image_size,
            train_per_class=train_per_class, pretrain_epochs=pretrain_epochs,
            fine_tune_epochs=fine_tune_epochs, tune_n_trials=tune_n_trials,
            params_overrides=params_overrides, data_fingerprint=data_fingerprint), "make_digits")
        p = first.outputs["params"]
        pre = step(tasks.pretrain_backbone(params=p, digits=first.outputs["digits"]), "pretrain_backbone")
        bb = pre.outputs["backbone"]
        sub = step(tasks.make_subset(params=p, data_fingerprint=data_fingerprint), "make_subset")
        subset = sub.outputs["subset"]
        val = step(tasks.validate_data(params=p, subset=subset), "validate_data")
        valid = val.outputs["validation"]
        aug = step(tasks.augment(params=p, subset=subset, validation=valid), "augment")
        feats = step(tasks.extract_features(params=p, subset=subset, validation=valid, backbone=bb),
                     "extract_features")
        head = step(tasks.train_head(params=p, features=feats.outputs["features"], validation=valid),
                    "train_head")
        study = step(tasks.tune_create_study(params=p, backbone=bb, storage=tune_storage,
                                             n_workers=n_tuning_workers), "tune create-study")
        with dsl.ParallelFor(study.output) as worker_index:
            worker = step(tasks.tune_worker(params=p, backbone=bb, subset=subset, head=head.outputs["head"],
                                            augmented=aug.outputs["augmented"], storage=tune_storage,
                                            worker_index=worker_index), "tune worker")
        best = step(tasks.tune_summarize(params=p, backbone=bb, storage=tune_storage), "tune summarize")
        best.after(worker)
        tuned = best.outputs["tune"]
        ft = step(tasks.fine_tune(params=p, backbone=bb, subset=subset, head=head.outputs["head"], tune=tuned,
                                  validation=valid), "fine_tune")
        ev = step(tasks.evaluate(params=p, subset=subset, model=ft.outputs["model"],
                                 head=head.outputs["head"], features=feats.outputs["features"],
                                 validation=valid), "evaluate")
        reg = step(tasks.register(params=p, model=ft.outputs["model"], evaluation=ev.outputs["evaluation"],
                                  subset=subset, validation=valid, tune=tuned), "register")
        reg.set_caching_options(False)  # registers a model version: a side effect, never replayed from cache
        return Outputs(metrics=ev.outputs["metrics"], registration=reg.outputs["registration"])

    return training_pipeline


def compile_pipeline(output: Path, params: Params, cluster: ClusterConfig) -> Path:
    """Compile to a KFP v2 pipeline package (IR YAML with the kubernetes platform spec)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(params, cluster), package_path=str(output))
    return output


def run_local(workdir: Path, params_path: Path, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run the whole pipeline with kfp.local's SubprocessRunner in this environment; returns its outputs.

    Tasks inherit this process's environment (MLFLOW_TRACKING_URI, TLPIPE_RUN_GROUP, AWS_*).
    """
    from kfp import local

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    params = load_params(params_path)
    os.environ["TLPIPE_PARAMS"] = str(params_path.resolve())
    os.environ.setdefault("TLPIPE_RUN_GROUP", f"kfp-local-{time.strftime('%Y%m%d-%H%M%S')}")
    arguments = {"tune_storage": f"sqlite:///{workdir / 'optuna.db'}", **arguments}
    arguments.setdefault("data_fingerprint", data_fingerprint(params, arguments.get("data_source", "")))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "kfp"))
    pipeline = build_pipeline(params, dataclasses.replace(ClusterConfig(), task_env=False))
    with warnings.catch_warnings():
        # Resource/GPU settings and the tlpipe image name are meaningless to a local subprocess; it says so.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        run = pipeline(**arguments)
    metrics, registration = run.outputs["metrics"], run.outputs["registration"]
    result = {"metrics": dict(metrics.metadata), "metrics_uri": metrics.uri,
              "registration": dict(registration.metadata), "registration_uri": registration.uri}
    (workdir / "run_local.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def submit(host: str, experiment: str, package: Path, arguments: dict[str, Any], namespace: str | None = None,
           wait: bool = False, timeout: int = 6 * 3600, run_name: str | None = None):
    """Upload `package` as a run of `experiment` on the KFP API server at `host`; optionally wait for it."""
    import kfp

    from components.errors import PipelineError

    try:
        client = kfp.Client(host=host, namespace=namespace) if namespace else kfp.Client(host=host)
        run = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, experiment_name=experiment, namespace=namespace,
            run_name=run_name or f"{PIPELINE_NAME} {time.strftime('%Y-%m-%d %H:%M:%S')}")
    except Exception as exc:  # connection refused, auth, HTTP errors from the KFP API: one line for a person
        raise PipelineError(f"KFP API at {host}: {str(exc).splitlines()[0][:300]}; check --host (e.g. a "
                            "port-forward to ml-pipeline-ui) and that you are logged in to the cluster") from None
    print(f"submitted run {run.run_id} to experiment {experiment!r} on {host}")
    if wait:
        done = client.wait_for_run_completion(run.run_id, timeout=timeout)
        state = getattr(done, "state", None) or getattr(getattr(done, "run", None), "status", "unknown")
        print(f"run {run.run_id} finished: {state}")
        if str(state).upper() not in ("SUCCEEDED", "SUCCESS"):
            raise SystemExit(1)
    return run


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {what} {item!r}: write KEY=VALUE")
        out[key] = yaml.safe_load(value)  # 2 -> int, true -> bool, [1, 2] -> list, text stays text
    return out


def _cluster(args: argparse.Namespace) -> ClusterConfig:
    key, _, value = args.gpu_pool.partition("=")
    return ClusterConfig(gpu_label_key=key, gpu_label_value=value, mlflow_tracking_uri=args.mlflow_uri,
                         aws_endpoint_url=args.aws_endpoint_url, tune_storage=args.tune_storage,
                         pipeline_root=args.pipeline_root)


def _parser() -> argparse.ArgumentParser:
    base = ClusterConfig()
    p = argparse.ArgumentParser(prog="python -m pipelines.training_pipeline",
                                description=__doc__.split("\n")[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="params file (default: params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--gpu-pool", default=f"{base.gpu_label_key}={base.gpu_label_value}",
                         help="node label KEY=VALUE of the GPU pool (default: %(default)s)")
    cluster.add_argument("--mlflow-uri", default=base.mlflow_tracking_uri,
                         help="MLFLOW_TRACKING_URI of the tasks")
    cluster.add_argument("--aws-endpoint-url", default=base.aws_endpoint_url,
                         help="S3 endpoint of the tasks (MinIO); empty = AWS")
    cluster.add_argument("--tune-storage", default=base.tune_storage,
                         help="Optuna storage URL (no credentials)")
    cluster.add_argument("--pipeline-root", default=base.pipeline_root,
                         help="where task artifacts go, e.g. s3://pipeline-root/tlpipe (default: the deployment's)")
    c = sub.add_parser("compile", parents=[cluster], help="write the pipeline package")
    c.add_argument("--output", type=Path, default=DEFAULT_PACKAGE)
    values = argparse.ArgumentParser(add_help=False)
    values.add_argument("--arg", action="append", metavar="NAME=VALUE", help="a typed pipeline parameter")
    values.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a params_overrides entry (dotted key)")
    r = sub.add_parser("run-local", parents=[values], help="run the whole pipeline here with kfp.local")
    r.add_argument("--workdir", type=Path, default=Path("kfp_local"), help="pipeline root and Optuna DB")
    r.add_argument("--full", action="store_true", help="params.yaml as is (default: small, fast settings)")
    s = sub.add_parser("submit", parents=[cluster, values], help="compile and start a run on a KFP cluster")
    s.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
    s.add_argument("--experiment", required=True)
    s.add_argument("--namespace", help="profile namespace (multi-user Kubeflow)")
    s.add_argument("--wait", action="store_true", help="wait for the run and fail unless it succeeds")
    s.add_argument("--package", type=Path, help="submit this compiled package instead of compiling now")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI: compile, run-local or submit."""
    args = _parser().parse_args(argv)
    params = load_params(args.params)
    if args.command == "compile":
        print(f"compiled -> {compile_pipeline(args.output, params, _cluster(args))}")
        return
    arguments = _pairs(args.arg, "--arg")
    overrides = _pairs(args.set, "--set")
    if args.command == "run-local":
        if not args.full:
            arguments = {**SMALL_ARGUMENTS, **arguments}
            overrides = {**SMALL_OVERRIDES, **overrides}
        arguments["params_overrides"] = overrides
        result = run_local(args.workdir, args.params, arguments)
        print(json.dumps(result, indent=2))
        return
    if overrides:
        arguments["params_overrides"] = overrides
    source = arguments.get("data_source", typed_defaults(params, ClusterConfig())["data_source"])
    arguments.setdefault("data_fingerprint", data_fingerprint(params, source))
    package = args.package
    if package is None:
        package = compile_pipeline(Path(tempfile.mkdtemp(prefix="tlpipe-kfp-")) / "training_pipeline.yaml",
                                   params, _cluster(args))
    submit(args.host, args.experiment, package, arguments, args.namespace, args.wait)


if __name__ == "__main__":
    from components.cli import run_main

    run_main(main)
