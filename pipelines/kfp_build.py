"""The Kubeflow pipeline, built from the declaration in pipelines/graph.py: one component per step.

Each step's component is generated from its declaration: a string `params` (the step's own params keys, so
KFP's cache reruns exactly the tasks whose params changed), an `Input[...]` per input another step makes, a
string per external input (an s3:// URI, an application name), an `Output[...]` per output folder, and a
body that calls the step's own `main()` with those paths (pipelines/runtime.py). A task therefore reads only
what it declares: on a cluster each pod downloads exactly its declared inputs from the pipeline root.

The graph uses only what the KFP backend runs plainly (tests/test_kfp_backend.py holds the compiled IR
against the backend's rules at platform.MIN_KFP_BACKEND): no trigger policies but the exit handler's, typed
loop items, no placeholders in env values. The fields of a Step decide the shape; no step is named here.

Lightweight Python components (not container components) because `kfp.local.SubprocessRunner` runs only
those; KFP ships a component's source text, so the generated source is registered with `linecache` for
`inspect.getsource`.
"""

import json
import linecache
import textwrap
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from pipelines.graph import External, Ref, Step, build, declared_params
from pipelines.platform import MIN_KFP_BACKEND, ClusterConfig, Pod, configure
from pipelines.runtime import task_params
from tlpipe.config import Params

PIPELINE_NAME = "tlpipe-training"
# Typed pipeline parameters -> the params key each one sets (everything else: params_overrides).
TYPED = {"image_size": "model.image_size", "train_per_class": "make_subset.train_per_class",
         "pretrain_epochs": "pretrain_backbone.epochs", "fine_tune_epochs": "fine_tune.epochs",
         "tune_n_trials": "tune.n_trials"}
FINGERPRINT = "data_fingerprint"  # the uncached task that hashes the data behind data.source
FINGERPRINT_KEYS = ("data", "make_digits", "storage")
CLOSE = "close_run"  # the exit handler: closes the MLflow pipeline run, FAILED when the run failed
CLOSE_KEYS = ("tracking",)
# A fan-out step (an Optuna study) runs as three tasks: create-study -> ParallelFor workers -> summarize.
ROLES = ("create-study", "worker", "summarize")


def pods(step: Step, params: Params) -> dict[str, Pod]:
    """The pod of each task of a step, by display name (a fan-out step has three)."""
    if not step.fanout:
        return {step.name: Pod(step.name, gpu=step.gpu, disk=step.disk)}
    sweep = bool(getattr(params.tune, "sweep", False))  # the sweep trains many models: GPU work with scratch
    return {f"{step.name} create-study": Pod(f"{step.name} create-study", study=True),
            f"{step.name} worker": Pod(f"{step.name} worker", gpu=step.gpu, disk=step.disk, study=True,
                                       retry=False, scratch=_worker_scratch(params)),
            f"{step.name} summarize": Pod(f"{step.name} summarize", gpu=step.gpu and sweep,
                                          disk=step.disk and sweep, study=True)}


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


def _kind(steps: dict[str, Step], ref: Ref) -> str:
    return steps[ref.step].output(ref.output).kind


def _signature(step: Step, steps: dict[str, Step]) -> list[str]:
    args = ["params: str"]
    for name, ref in step.inputs.items():
        args.append(f"{name}: Input[{_kind(steps, ref)}]" if isinstance(ref, Ref) else f"{name}: str")
    return args


def _values(step: Step) -> list[str]:
    return [f"{name!r}: {name}" for name, ref in step.inputs.items() if isinstance(ref, External)]


def _flags(step: Step) -> str:
    flags = []
    for name, ref in step.inputs.items():
        if isinstance(ref, Ref):  # an External is a string argument (`_values`), not an artifact
            flags.append(f"{name!r}: os.path.join({name}.path, {ref.sub!r})" if ref.sub else f"{name!r}: {name}.path")
    return ", ".join(flags)


def _component(name: str, source: str, image: str):
    """Turn generated source into a KFP component (its text is what KFP ships)."""
    source = textwrap.dedent(source).strip() + "\n"
    filename = f"<tlpipe component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # `List[int]` (list[int]): the loop item is typed NUMBER_INTEGER in the IR, like worker_index.
    scope: dict[str, Any] = {"Input": Input, "Output": Output, "Artifact": Artifact, "Dataset": Dataset,
                             "Model": Model, "Metrics": Metrics, "List": list, "NamedTuple": NamedTuple,
                             "PipelineTaskFinalStatus": dsl.PipelineTaskFinalStatus, "__name__": "tlpipe_components"}
    exec(compile(source, filename, "exec", dont_inherit=True), scope)  # noqa: S102 - generated above
    return dsl.component(base_image=image, install_kfp_package=False)(scope[name])


def step_component(step: Step, steps: dict[str, Step], image: str):
    """The component of an ordinary step."""
    args = _signature(step, steps) + [f"{o.name}: Output[{o.kind}]" for o in step.outputs]
    outs = ", ".join(f"{o.name!r}: {o.name}.path" for o in step.outputs)
    values = _values(step)
    if step.fingerprint:
        args.append(f"{FINGERPRINT}: str")  # the raw data's content: busts KFP's cache when the data changes
    body = [f"run_step({step.name!r}, params, {{{_flags(step)}}}, {{{outs}}}, {tuple(step.scratch)!r}, "
            f"{step.command!r}, values={{{', '.join(values)}}})"]
    if step.metrics:
        args.append("metrics: Output[Metrics]")
        output, _, file = step.metrics[0].partition("/")
        body.append(f"log_metrics(metrics, os.path.join({output}.path, {file!r}))")
    lines = "\n    ".join(body)
    source = f'''
def {step.name}({", ".join(args)}):
    """tlpipe step {step.name}: python -m components.{step.name} on the declared inputs and outputs."""
    import os

    from pipelines.runtime import log_metrics, run_step

    {lines}
'''
    return _component(step.name, source, image)


def fanout_components(step: Step, steps: dict[str, Step], images: dict[str, str]) -> dict[str, Any]:
    """create-study (returns the worker indices), worker, summarize: one study shared through its storage."""
    args = ", ".join(_signature(step, steps) + ["storage: str"])
    flags, values = _flags(step), ", ".join(_values(step) + ["'storage': storage"])
    scratch = tuple(step.scratch)
    out = step.outputs[0].name
    header = "import os\n\n    from pipelines.runtime import run_step\n"
    sources = {
        "create-study": (f"{step.name}_create_study", f'''
def {step.name}_create_study({args}, n_workers: int) -> List[int]:
    """Create the study (idempotent); returns the worker indices (integers, as worker_index is typed)."""
    {header}
    run_step({step.name!r}, params, {{{flags}}}, {{}}, (), "create-study", values={{{values}}})
    return list(range(n_workers))
'''),
        "worker": (f"{step.name}_worker", f'''
def {step.name}_worker({args}, worker_index: int):
    """Take trials of the shared study until its trial budget is spent; a failed trial fails only itself."""
    {header}
    run_step({step.name!r}, params, {{{flags}}}, {{}}, {scratch!r}, "worker",
             values={{{values}, "worker-index": str(worker_index)}})
'''),
        "summarize": (f"{step.name}_summarize", f'''
def {step.name}_summarize({args}, {out}: Output[Artifact]):
    """The fan-in: the best params (what the next step reads), the study's plots and the sweep."""
    {header}
    run_step({step.name!r}, params, {{{flags}}}, {{{out!r}: {out}.path}}, {scratch!r}, "summarize",
             values={{{values}}})
'''),
    }
    return {role: _component(fn, src, images[role]) for role, (fn, src) in sources.items()}


def params_component(image: str, names: tuple[str, ...]):
    """The first task: each task's own params (YAML), from the compile-time params, typed params and overrides."""
    typed = ", ".join(f"{name!r}: {name}" for name in TYPED)
    keys = ", ".join(f"{name}: int" for name in TYPED)
    fields = ", ".join(f"({name!r}, str)" for name in names)
    source = f'''
def resolve_params(base: str, {keys}, params_overrides: dict) -> NamedTuple("TaskParams", [{fields}]):
    """Validated params, cut per task: configuration only, never a path to another artifact."""
    import json
    from collections import namedtuple

    from pipelines.runtime import resolve_params, task_params

    typed_keys = {TYPED!r}
    resolved = resolve_params(json.loads(base), {{typed_keys[k]: v for k, v in {{{typed}}}.items()}},
                              params_overrides)
    names = {names!r}
    return namedtuple("TaskParams", names)(*[task_params(resolved, name) for name in names])
'''
    return _component("resolve_params", source, image)


def helper_components(image: str) -> dict[str, Any]:
    """The uncached data fingerprint and the exit handler that closes the MLflow pipeline run."""
    fingerprint = f'''
def {FINGERPRINT}(params: str) -> str:
    """A hash of the data behind data.source now (an s3:// listing, a folder's content): busts the cache."""
    from pipelines.runtime import fingerprint_data

    return fingerprint_data(params)
'''
    close = f'''
def {CLOSE}(params: str, status: PipelineTaskFinalStatus):
    """Close this run's MLflow pipeline run: FAILED with the error when the pipeline failed."""
    from pipelines.runtime import close_pipeline_run

    close_pipeline_run(params, status.state, status.error_message or "")
'''
    return {FINGERPRINT: _component(FINGERPRINT, fingerprint, image), CLOSE: _component(CLOSE, close, image)}


def build_pipeline(params: Params, cluster: ClusterConfig | None = None):
    """The pipeline function for these params (its shape) and cluster settings (images, pods)."""
    cluster = cluster or ClusterConfig()
    steps = build(params)
    named = {s.name: s for s in steps}
    every = all_pods(params)
    image = cluster.image_for(False)
    names = tuple([FINGERPRINT] + [s.name for s in steps])
    plain = {s.name: step_component(s, named, cluster.image_for(s.gpu)) for s in steps if not s.fanout}
    fanned = {s.name: fanout_components(s, named, {role: cluster.image_for(every[f"{s.name} {role}"].gpu)
                                                   for role in ROLES}) for s in steps if s.fanout}
    helpers = helper_components(image)
    base = json.dumps(params.model_dump(mode="json"), sort_keys=True)  # a string: KFP constants hold no null
    defaults = {name: _get(params, key) for name, key in TYPED.items()}
    description = (f"Transfer learning: {', '.join(named)}. Needs a KFP backend >= {MIN_KFP_BACKEND} "
                   "(see pipelines/README.md).")

    @dsl.pipeline(name=PIPELINE_NAME, description=description, pipeline_root=cluster.pipeline_root or None)
    def training_pipeline(image_size: int = defaults["image_size"],
                          train_per_class: int = defaults["train_per_class"],
                          pretrain_epochs: int = defaults["pretrain_epochs"],
                          fine_tune_epochs: int = defaults["fine_tune_epochs"],
                          tune_n_trials: int = defaults["tune_n_trials"],
                          n_tuning_workers: int = 2, tune_storage: str = cluster.tune_storage,
                          params_overrides: dict = {}):  # noqa: B006 - KFP reads the literal default
        resolved = configure(params_component(image, names)(
            base=base, image_size=image_size, train_per_class=train_per_class, pretrain_epochs=pretrain_epochs,
            fine_tune_epochs=fine_tune_epochs, tune_n_trials=tune_n_trials, params_overrides=params_overrides),
            every["params"], cluster)
        own = resolved.outputs
        # The exit task's only upstream must be the exit handler: the backend hooks it onto every task it
        # depends on (argocompiler/dag.go), so its params are a compile-time constant, not resolve_params'.
        close = configure(helpers[CLOSE](params=task_params(params.model_dump(mode="json"), CLOSE)), every[CLOSE],
                          cluster)
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
                    made[step.name] = _fan_out(step, fanned[step.name], args, every, cluster, n_tuning_workers,
                                               tune_storage)
                    continue
                if step.fingerprint:
                    args[FINGERPRINT] = fingerprint.output
                made[step.name] = configure(plain[step.name](**args), every[step.name], cluster)
                if not step.cache:
                    made[step.name].set_caching_options(False)  # a side effect: never replayed from the cache

    return training_pipeline


def _fan_out(step: Step, comps: dict[str, Any], args: dict[str, Any], every: dict[str, Pod],
             cluster: ClusterConfig, n_workers, storage) -> dsl.PipelineTask:
    shared = {**args, "storage": storage}
    create = configure(comps["create-study"](**shared, n_workers=n_workers), every[f"{step.name} create-study"],
                       cluster)
    with dsl.ParallelFor(create.output) as index:
        worker = configure(comps["worker"](**shared, worker_index=index), every[f"{step.name} worker"], cluster)
    summarize = configure(comps["summarize"](**shared), every[f"{step.name} summarize"], cluster).after(worker)
    summarize.set_caching_options(False)  # the study may have grown since: always read it again
    return summarize


def _get(params: Params, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(params, section), name)
