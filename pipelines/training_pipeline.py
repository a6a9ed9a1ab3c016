"""The tlpipe training pipeline on Kubeflow Pipelines v2: compile it, run it here, or submit it.

    python -m pipelines.training_pipeline compile [--output pipelines/training_pipeline.yaml] [--image ...]
    python -m pipelines.training_pipeline run-local [--workdir DIR] [--full] [--set KEY=VALUE ...]
    python -m pipelines.training_pipeline submit --package FILE --host URL --experiment NAME [--namespace NS]

The pipeline's shape comes from params.yaml when compiling (pipelines/graph.py); typed pipeline parameters
take their defaults from it, and any other key goes in `params_overrides` (dotted keys, applied last).
`run-local` runs every task the way a pod runs it (pipelines/isolation.py), with its own MLflow tracking
server on loopback unless MLFLOW_TRACKING_URI is set. See pipelines/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler

from pipelines.graph import build
from pipelines.kfp_build import PIPELINE_NAME, build_pipeline
from pipelines.platform import DEFAULT_IMAGE, ClusterConfig
from pipelines.runtime import ISOLATE_ENV
from pipelines.step import External
from tlpipe.config import Params, load_params, parse_assignments
from tlpipe.errors import PipelineError

DEFAULT_PACKAGE = Path("pipelines/training_pipeline.yaml")
# run-local's default: the whole pipeline in a few minutes on two CPU cores.
SMALL_ARGUMENTS = {
    "image_size": 16,
    "train_per_class": 20,
    "pretrain_epochs": 4,
    "fine_tune_epochs": 6,
    "tune_n_trials": 2,
    "n_tuning_workers": 2,
}
SMALL_OVERRIDES = {
    "make_subset.val_per_class": 8,
    "make_subset.test_per_class": 8,
    "train_head.epochs": 5,
    "tune.epochs": 3,
    "tune.regimes": ["transfer"],
    "tune.sweep_points": 2,
    "tune.sweep_seeds": 1,
    "augment.copies": 1,
}


def refuse_local_inputs(params: Params) -> None:
    """A pod has no local paths: data.source and the backbone must be s3://, builtin:digits or a name/URI."""
    for step in build(params):
        for name, ref in step.inputs.items():
            if isinstance(ref, External) and ref.is_local_path:
                raise PipelineError(
                    f"{step.name} --{name} {ref.value}: a local path, which no pod on the cluster has; a cluster "
                    "reads s3:// or builtin:digits: push the data with `dvc push` / `aws s3 sync` first and set "
                    "the s3:// URI in params.yaml"
                )


def compile_pipeline(output: Path, params: Params, cluster: ClusterConfig) -> Path:
    """Compile to a KFP v2 pipeline package (IR YAML with the kubernetes platform spec)."""
    refuse_local_inputs(params)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(params, cluster), package_path=str(output))
    return output


def run_local(workdir: Path, params: Params, arguments: dict[str, Any], isolate: bool = True) -> dict[str, Any]:
    """Run the whole pipeline with kfp.local, each task as in a pod; returns evaluate's metrics.

    Tasks inherit this process's environment (AWS_*). MLflow: MLFLOW_TRACKING_URI if set, else a tracking
    server started here on loopback for the run (as on the cluster, tasks reach it over HTTP).
    """
    from kfp import local

    from pipelines.local_services import mlflow_server, optuna_storage

    workdir = workdir.resolve()
    root = workdir / "pipeline-root"
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TLPIPE_RUN_GROUP", f"kfp-local-{time.strftime('%Y%m%d-%H%M%S')}")
    if isolate:
        os.environ[ISOLATE_ENV] = str(root)
    arguments = {"tune_storage": optuna_storage(workdir), **arguments}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline = build_pipeline(params, ClusterConfig.local())
    started = time.time()
    with mlflow_server(workdir), warnings.catch_warnings():
        # Resource/GPU settings and the tlpipe image name are meaningless to a local subprocess; it says so.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        try:
            pipeline(**arguments)
        except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed"
            reason = str(exc).splitlines()[0] if str(exc) else "a task failed"
            raise PipelineError(f"run-local: {_plain(reason)}; its log is above") from None
    evaluate = next(s for s in build(params) if s.name == "evaluate")
    metrics = _newest(root, "evaluate", evaluate.metrics[0], started)
    result = {"metrics": json.loads(metrics.read_text(encoding="utf-8")), "metrics_uri": str(metrics)}
    (workdir / "run_local.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _plain(text: str) -> str:
    """kfp.local's message without its terminal colour codes."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _newest(root: Path, task: str, output: str, since: float) -> Path:
    """The output file `output` of `task` in the newest run under the pipeline root."""
    found = [p for p in root.glob(f"*/{task}/{output}") if p.stat().st_mtime >= since - 1]
    if not found:
        raise PipelineError(f"run-local: no {task} output under {root}; see the task logs above")
    return max(found, key=lambda p: p.stat().st_mtime)


def _cluster(args: argparse.Namespace) -> ClusterConfig:
    key, _, value = args.gpu_pool.partition("=")
    extra = {"image": args.image} if args.image else {}
    if args.gpu_image:
        extra["gpu_image"] = args.gpu_image
    if args.image_pull_secret:
        extra["image_pull_secrets"] = tuple(args.image_pull_secret)
    return ClusterConfig(
        gpu_label_key=key,
        gpu_label_value=value,
        mlflow_tracking_uri=args.mlflow_uri,
        aws_endpoint_url=args.aws_endpoint_url,
        tune_storage=args.tune_storage,
        pipeline_root=args.pipeline_root,
        legacy_backend=args.legacy_backend,
        **extra,
    )


def _parser() -> argparse.ArgumentParser:
    base = ClusterConfig()
    p = argparse.ArgumentParser(
        prog="python -m pipelines.training_pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    sub = p.add_subparsers(dest="command", required=True)
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--image", default="", help=f"task image, tag or @sha256 digest (default {base.image})")
    cluster.add_argument("--gpu-image", default="", help="image of GPU tasks (default: the image's -gpu variant)")
    cluster.add_argument("--image-pull-secret", action="append", help="a Secret for a private registry")
    cluster.add_argument(
        "--gpu-pool",
        default=f"{base.gpu_label_key}={base.gpu_label_value}",
        help="node label KEY=VALUE of the GPU pool",
    )
    cluster.add_argument("--mlflow-uri", default=base.mlflow_tracking_uri, help="MLFLOW_TRACKING_URI of the tasks")
    cluster.add_argument("--aws-endpoint-url", default=base.aws_endpoint_url, help="S3 endpoint (MinIO); empty = AWS")
    cluster.add_argument("--tune-storage", default=base.tune_storage, help="Optuna storage URL (no credentials)")
    cluster.add_argument("--pipeline-root", default=base.pipeline_root, help="e.g. s3://pipeline-root/tlpipe")
    cluster.add_argument(
        "--legacy-backend",
        action="store_true",
        help="emit only fields older KFP backends accept (see pipelines/README.md)",
    )
    c = sub.add_parser("compile", parents=[cluster], help="write the pipeline package")
    c.add_argument("--output", type=Path, default=DEFAULT_PACKAGE)
    values = argparse.ArgumentParser(add_help=False)
    values.add_argument("--arg", action="append", metavar="NAME=VALUE", help="a typed pipeline parameter")
    values.add_argument("--set", action="append", metavar="KEY=VALUE", help="a params_overrides entry (dotted key)")
    r = sub.add_parser("run-local", parents=[values], help="run the whole pipeline here with kfp.local")
    r.add_argument("--workdir", type=Path, default=Path("kfp_local"), help="pipeline root and Optuna DB")
    r.add_argument("--full", action="store_true", help="params.yaml as is (default: small, fast settings)")
    s = sub.add_parser("submit", parents=[cluster, values], help="compile and start a run on a KFP cluster")
    s.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
    s.add_argument("--experiment", required=True)
    s.add_argument(
        "--namespace",
        default=os.environ.get("KF_PIPELINES_NAMESPACE"),
        help="profile namespace (multi-user Kubeflow; env KF_PIPELINES_NAMESPACE)",
    )
    s.add_argument(
        "--token-file",
        help="a file holding a bearer token (else KF_PIPELINES_TOKEN or the pod's service-account token)",
    )
    s.add_argument("--wait", action="store_true", help="wait for the run and fail unless it succeeds")
    s.add_argument("--package", type=Path, help="submit this compiled package instead of compiling now")
    s.add_argument("--run-name", default="", help=f"the run's name (default: {PIPELINE_NAME} <time>)")
    s.add_argument(
        "--allow-default-image",
        action="store_true",
        help=f"submit even though the tasks run the placeholder image {DEFAULT_IMAGE}",
    )
    return p


def package_images(package: Path) -> set[str]:
    """The container images a compiled package's tasks run."""
    try:
        spec = next(yaml.safe_load_all(package.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, StopIteration) as exc:
        raise PipelineError(
            f"--package {package}: not a readable pipeline package ({exc}); run `make compile`"
        ) from None
    executors = (spec or {}).get("deploymentSpec", {}).get("executors", {})
    return {e["container"]["image"] for e in executors.values() if "container" in e}


def refuse_default_image(package: Path, allowed: bool) -> None:
    """The placeholder image is nobody's build: refuse it unless asked (a throwaway run)."""
    placeholder = {DEFAULT_IMAGE, f"{DEFAULT_IMAGE}-gpu"} & package_images(package)
    if placeholder and not allowed:
        raise PipelineError(
            f"--package {package} runs the placeholder image {sorted(placeholder)[0]}; compile with "
            "your build (`make compile IMAGE=... TAG=...` or DIGEST=... GPU_DIGEST=...), or pass "
            "ALLOW_DEFAULT_IMAGE=1 / --allow-default-image"
        )


def run_url(host: str, run_id: str) -> str:
    """The run's page in the KFP UI (the API host serves the UI under the same prefix)."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def main(argv: list[str] | None = None) -> None:
    """CLI: compile, run-local or submit."""
    args = _parser().parse_args(argv)
    params = load_params(args.params)
    if args.command == "compile":
        print(f"compiled -> {compile_pipeline(args.output, params, _cluster(args))}")
        return
    arguments = parse_assignments(args.arg, "--arg")
    overrides = parse_assignments(args.set, "--set")
    if args.command == "run-local":
        if not args.full:
            arguments = {**SMALL_ARGUMENTS, **arguments}
            overrides = {**SMALL_OVERRIDES, **overrides}
        arguments["params_overrides"] = overrides
        print(json.dumps(run_local(args.workdir, params, arguments), indent=2))
        return
    from pipelines.submit import credentials_from_env, submit

    if overrides:
        arguments["params_overrides"] = overrides
    package = args.package or compile_pipeline(
        Path(tempfile.mkdtemp(prefix="tlpipe-kfp-")) / "training_pipeline.yaml", params, _cluster(args)
    )
    refuse_default_image(package, args.allow_default_image)
    run = submit(
        args.host,
        args.experiment,
        package,
        arguments,
        args.namespace,
        args.wait,
        run_name=args.run_name or f"{PIPELINE_NAME} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        **credentials_from_env(args.token_file),
    )
    print(f"run page: {run_url(args.host, run.run_id)}")


if __name__ == "__main__":
    from tlpipe.cli import run_main

    run_main(main)
