"""The Kubeflow pipeline, built from the declaration in pipelines/graph.py: one component per step.

Each step's component is generated from its declaration: a string `params` (the step's own params keys, so
KFP's cache reruns exactly the tasks whose params changed), an `Input[...]` per input another step makes, a
string per external input (an s3:// URI, an application name), an `Output[...]` per output folder, and a
body that calls the step's own `main()` with those paths (pipelines/runtime.py). A task therefore reads only
what it declares: on a cluster each pod downloads exactly its declared inputs from the pipeline root.

The graph uses only what the KFP backend runs plainly (tests/pipeline/test_kfp_backend.py holds the compiled IR
against the backend's rules at platform.MIN_KFP_BACKEND): no trigger policies but the exit handler's, typed
loop items, no placeholders in env values. The fields of a Step decide the shape; no step is named here.
The component sources are generated in `pipelines/kfp_components.py`.
"""

import json
from typing import Any

from kfp import dsl

from pipelines.graph import build
from pipelines.kfp_components import (
    CLOSE,
    CLOSE_KEYS,
    FINGERPRINT,
    FINGERPRINT_KEYS,
    TYPED,
    fanout_components,
    helper_components,
    params_component,
    step_component,
)
from pipelines.platform import MIN_KFP_BACKEND, ClusterConfig, Pod, configure
from pipelines.runtime import task_params
from pipelines.step import Ref, Step, declared_params
from tlpipe.config import Params

PIPELINE_NAME = "tlpipe-training"
# A fan-out step (an Optuna study) runs as three tasks: create-study -> ParallelFor workers -> summarize.
ROLES = ("create-study", "worker", "summarize")


def pods(step: Step, params: Params) -> dict[str, Pod]:
    """The pod of each task of a step, by display name (a fan-out step has three)."""
    if not step.fanout:
        return {step.name: Pod(step.name, gpu=step.gpu, disk=step.disk)}
    sweep = bool(getattr(params.tune, "sweep", False))  # the sweep trains many models: GPU work with scratch
    return {
        f"{step.name} create-study": Pod(f"{step.name} create-study", study=True),
        f"{step.name} worker": Pod(
            f"{step.name} worker",
            gpu=step.gpu,
            disk=step.disk,
            study=True,
            retry=False,
            scratch=_worker_scratch(params),
        ),
        f"{step.name} summarize": Pod(
            f"{step.name} summarize", gpu=step.gpu and sweep, disk=step.disk and sweep, study=True
        ),
    }


def _worker_scratch(params: Params) -> str:
    """The worker's emptyDir from its activation cache plan, never below the platform default."""
    from pipelines.platform import SCRATCH
    from tlpipe.tuning.sizing import tune_worker_scratch

    size = tune_worker_scratch(params)
    return size if size and int(size.removesuffix("Gi")) > int(SCRATCH.removesuffix("Gi")) else SCRATCH


def all_pods(params: Params) -> dict[str, Pod]:
    """Every task's pod, by display name, the two helper tasks included."""
    out = {"params": Pod("params"), FINGERPRINT: Pod(FINGERPRINT), CLOSE: Pod(CLOSE)}
    for step in build(params):
        out.update(pods(step, params))
    return out


def task_keys(step_name: str) -> tuple[str, ...]:
    """The params keys a task receives: the step's PARAMS (tracking always: where its MLflow run goes)."""
    if step_name == FINGERPRINT:
        return FINGERPRINT_KEYS
    if step_name == CLOSE:
        return CLOSE_KEYS
    return declared_params(step_name)


def build_pipeline(params: Params, cluster: ClusterConfig | None = None):
    """The pipeline function for these params (its shape) and cluster settings (images, pods)."""
    cluster = cluster or ClusterConfig()
    steps = build(params)
    named = {s.name: s for s in steps}
    every = all_pods(params)
    image = cluster.image_for(False)
    names = tuple([FINGERPRINT] + [s.name for s in steps])
    plain = {s.name: step_component(s, named, cluster.image_for(s.gpu)) for s in steps if not s.fanout}
    fanned = {
        s.name: fanout_components(s, named, {role: cluster.image_for(every[f"{s.name} {role}"].gpu) for role in ROLES})
        for s in steps
        if s.fanout
    }
    helpers = helper_components(image)
    base = json.dumps(params.model_dump(mode="json"), sort_keys=True)  # a string: KFP constants hold no null
    defaults = {name: _get(params, key) for name, key in TYPED.items()}
    description = (
        f"Transfer learning: {', '.join(named)}. Needs a KFP backend >= {MIN_KFP_BACKEND} (see pipelines/README.md)."
    )

    @dsl.pipeline(name=PIPELINE_NAME, description=description, pipeline_root=cluster.pipeline_root or None)
    def training_pipeline(
        image_size: int = defaults["image_size"],
        train_per_class: int = defaults["train_per_class"],
        pretrain_epochs: int = defaults["pretrain_epochs"],
        fine_tune_epochs: int = defaults["fine_tune_epochs"],
        tune_n_trials: int = defaults["tune_n_trials"],
        n_tuning_workers: int = 2,
        tune_storage: str = cluster.tune_storage,
        params_overrides: dict = {},  # noqa: B006 - KFP reads the literal default
    ):
        resolved = configure(
            params_component(image, names)(
                base=base,
                image_size=image_size,
                train_per_class=train_per_class,
                pretrain_epochs=pretrain_epochs,
                fine_tune_epochs=fine_tune_epochs,
                tune_n_trials=tune_n_trials,
                params_overrides=params_overrides,
            ),
            every["params"],
            cluster,
        )
        own = resolved.outputs
        # The exit task's only upstream must be the exit handler: the backend hooks it onto every task it
        # depends on (argocompiler/dag.go), so its params are a compile-time constant, not resolve_params'.
        close = configure(
            helpers[CLOSE](params=task_params(params.model_dump(mode="json"), CLOSE)), every[CLOSE], cluster
        )
        close.set_caching_options(False)
        with dsl.ExitHandler(close, name="pipeline"):
            fingerprint = configure(helpers[FINGERPRINT](params=own[FINGERPRINT]), every[FINGERPRINT], cluster)
            fingerprint.set_caching_options(False)  # UI and recurring runs see new objects under the same URI
            made: dict[str, dsl.PipelineTask] = {}
            for step in steps:
                args: dict[str, Any] = {"params": own[step.name]}
                for name, ref in step.inputs.items():
                    args[name] = made[ref.step].outputs[ref.output] if isinstance(ref, Ref) else ref.value
                if step.fanout:
                    made[step.name] = _fan_out(
                        step, fanned[step.name], args, every, cluster, n_tuning_workers, tune_storage
                    )
                    continue
                if step.fingerprint:
                    args[FINGERPRINT] = fingerprint.output
                made[step.name] = configure(plain[step.name](**args), every[step.name], cluster)
                if not step.cache:
                    made[step.name].set_caching_options(False)  # a side effect: never replayed from the cache

    return training_pipeline


def _fan_out(
    step: Step,
    comps: dict[str, Any],
    args: dict[str, Any],
    every: dict[str, Pod],
    cluster: ClusterConfig,
    n_workers,
    storage,
) -> dsl.PipelineTask:
    shared = {**args, "storage": storage}
    create = configure(
        comps["create-study"](**shared, n_workers=n_workers), every[f"{step.name} create-study"], cluster
    )
    with dsl.ParallelFor(create.output) as index:
        worker = configure(comps["worker"](**shared, worker_index=index), every[f"{step.name} worker"], cluster)
    summarize = configure(comps["summarize"](**shared), every[f"{step.name} summarize"], cluster).after(worker)
    summarize.set_caching_options(False)  # the study may have grown since: always read it again
    return summarize


def _get(params: Params, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(params, section), name)
