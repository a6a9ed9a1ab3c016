"""The Kubeflow pipeline, built from the declaration in pipelines/graph.py: one component per step.

Each step's component is generated from its declaration: an `Input[...]` per input another step makes, a
string per external input (an s3:// URI, an application name), an `Output[...]` per output folder, and a
body that calls the step's own `main()` with those paths (pipelines/runtime.py). A task therefore reads only
what it declares: on a cluster each pod downloads exactly its declared inputs from the pipeline root.

Lightweight Python components (not container components) because `kfp.local.SubprocessRunner` runs only
those; KFP ships a component's source text, so the generated source is registered with `linecache` for
`inspect.getsource`. `tune` fans out: create-study, a ParallelFor of workers, summarize.
"""


import json
import linecache
import textwrap
from typing import Any

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from pipelines.graph import External, Ref, Step, build
from pipelines.platform import MIN_KFP_BACKEND, ClusterConfig, configure
from tlpipe.config import Params

PIPELINE_NAME = "tlpipe-training"
KINDS = {"Dataset": Dataset, "Model": Model, "Artifact": Artifact}
# Typed pipeline parameters -> the params key each one sets (everything else: params_overrides).
TYPED = {"image_size": "model.image_size", "train_per_class": "make_subset.train_per_class",
         "pretrain_epochs": "pretrain_backbone.epochs", "fine_tune_epochs": "fine_tune.epochs",
         "tune_n_trials": "tune.n_trials"}
TUNE_INPUTS = ("subset", "augmented", "head", "backbone")


def _kind(steps: dict[str, Step], ref: Ref) -> str:
    return steps[ref.step].output(ref.output).kind


def _signature(step: Step, steps: dict[str, Step], inputs: tuple[str, ...] | None = None) -> list[str]:
    args = ["params: Input[Artifact]"]
    for name, ref in step.inputs.items():
        if inputs is None or name in inputs:
            args.append(f"{name}: Input[{_kind(steps, ref)}]" if isinstance(ref, Ref) else f"{name}: str")
    return args


def _values(step: Step, inputs: tuple[str, ...] | None = None) -> list[str]:
    return [f"{name!r}: {name}" for name, ref in step.inputs.items()
            if isinstance(ref, External) and (inputs is None or name in inputs)]


def _flags(step: Step, inputs: tuple[str, ...] | None = None) -> list[str]:
    flags = []
    for name, ref in step.inputs.items():
        if inputs is None or name in inputs:
            if isinstance(ref, External):
                continue  # a string argument (`_values`), not an artifact
            if ref.sub:
                flags.append(f"{name!r}: os.path.join({name}.path, {ref.sub!r})")
            else:
                flags.append(f"{name!r}: {name}.path")
    return flags


def _component(name: str, source: str, image: str):
    """Turn generated source into a KFP component (its text is what KFP ships)."""
    source = textwrap.dedent(source).strip() + "\n"
    filename = f"<tlpipe component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope: dict[str, Any] = {"Input": Input, "Output": Output, "Artifact": Artifact, "Dataset": Dataset,
                             "Model": Model, "Metrics": Metrics, "__name__": "tlpipe_components"}
    exec(compile(source, filename, "exec", dont_inherit=True), scope)  # noqa: S102 - generated above
    return dsl.component(base_image=image, install_kfp_package=False)(scope[name])


def step_component(step: Step, steps: dict[str, Step], image: str):
    """The component of an ordinary step."""
    args = _signature(step, steps) + [f"{o.name}: Output[{o.kind}]" for o in step.outputs]
    flags = _flags(step)
    outs = ", ".join(f"{o.name!r}: {o.name}.path" for o in step.outputs)
    if step.name == "make_subset":
        args.append("data_fingerprint: str")  # the raw data's content: busts KFP's cache when the data changes
    values = ", ".join(_values(step))
    body = [f"run_step({step.name!r}, params.path, {{{', '.join(flags)}}}, {{{outs}}}, {tuple(step.scratch)!r}, "
            f"{step.command!r}, values={{{values}}})"]
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


def tune_components(step: Step, steps: dict[str, Step], image: str, gpu_image: str) -> dict[str, Any]:
    """create-study (returns the worker indices), worker, summarize: one study shared through its storage."""
    args = ", ".join(_signature(step, steps, TUNE_INPUTS) + ["storage: str"])
    # summarize may run after a failed worker (ignore_upstream_failure), which KFP allows only for inputs
    # with a default; its inputs all come from tasks that succeeded before the workers started.
    optional = ", ".join(f"{a} = None" for a in _signature(step, steps, TUNE_INPUTS)) + ", storage: str = ''"
    flags = ", ".join(_flags(step, TUNE_INPUTS))
    values = ", ".join(_values(step, TUNE_INPUTS) + ["'storage': storage"])
    header = "import os\n\n    from pipelines.runtime import run_step\n"
    sources = {
        "tune_create_study": (f'''
def tune_create_study({args}, n_workers: int) -> list:
    """Create the Optuna study (idempotent); returns the worker indices the ParallelFor fans out over."""
    {header}
    run_step("tune", params.path, {{{flags}}}, {{}}, (), "create-study", values={{{values}}})
    return list(range(n_workers))
''', image),
        "tune_worker": (f'''
def tune_worker({args}, worker_index: int):
    """Take trials of the shared study until tune.n_trials have finished in total."""
    {header}
    run_step("tune", params.path, {{{flags}}}, {{}}, ("cache-dir",), "worker",
             values={{{values}, "worker-index": str(worker_index)}})
''', gpu_image),
        "tune_summarize": (f'''
def tune_summarize(tuning: Output[Artifact], {optional}):
    """The fan-in: best_params.json (what fine_tune reads) and the study's plots."""
    {header}
    run_step("tune", params.path, {{{flags}}}, {{"tuning": tuning.path}}, (), "summarize", values={{{values}}})
''', image),
    }
    return {name: _component(name, src, img) for name, (src, img) in sources.items()}


def params_component(image: str):
    """The first task: the run's params.yaml from the compile-time params, typed parameters and overrides."""
    typed = ", ".join(f"{name!r}: {name}" for name in TYPED)
    keys = ", ".join(f"{name}: int" for name in TYPED)
    source = f'''
def resolve_params(base: str, {keys}, params_overrides: dict, params: Output[Artifact]):
    """params.yaml for every task: configuration only, never a path to another artifact."""
    import json

    from pipelines.runtime import resolve_params

    typed_keys = {TYPED!r}
    resolve_params(params.path, json.loads(base), {{typed_keys[k]: v for k, v in {{{typed}}}.items()}},
                   params_overrides)
'''
    return _component("resolve_params", source, image)


def build_pipeline(params: Params, cluster: ClusterConfig | None = None, tolerate_worker_failure: bool = True):
    """The pipeline function for these params (its shape) and cluster settings (images, pods)."""
    cluster = cluster or ClusterConfig()
    steps = build(params)
    named = {s.name: s for s in steps}
    image = cluster.image_for("resolve_params")
    tasks = {s.name: step_component(s, named, cluster.image_for(s.name)) for s in steps if s.name != "tune"}
    tune = tune_components(named["tune"], named, image, cluster.image_for("tune worker"))
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
                          params_overrides: dict = {},  # noqa: B006 - KFP reads the literal default
                          data_fingerprint: str = "") -> dsl.Metrics:
        first = configure(params_component(image)(
            base=base, image_size=image_size, train_per_class=train_per_class, pretrain_epochs=pretrain_epochs,
            fine_tune_epochs=fine_tune_epochs, tune_n_trials=tune_n_trials, params_overrides=params_overrides),
            "params", cluster)
        made: dict[str, dsl.PipelineTask] = {}

        def inputs(step: Step, only: tuple[str, ...] | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {"params": first.outputs["params"]}
            for name, ref in step.inputs.items():
                if only is None or name in only:
                    out[name] = made[ref.step].outputs[ref.output] if isinstance(ref, Ref) else ref.value
            return out

        for step in steps:
            if step.name == "tune":
                shared = {**inputs(step, TUNE_INPUTS), "storage": tune_storage}
                create = configure(tune["tune_create_study"](**shared, n_workers=n_tuning_workers),
                                   "tune create-study", cluster)
                with dsl.ParallelFor(create.output) as index:
                    worker = configure(tune["tune_worker"](**shared, worker_index=index), "tune worker", cluster)
                made["tune"] = configure(tune["tune_summarize"](**shared), "tune summarize", cluster)
                made["tune"].after(worker)
                if tolerate_worker_failure:
                    # Runs once the workers are done, even if one failed: the study holds the trials, and
                    # summarize fails by itself when none completed.
                    made["tune"].ignore_upstream_failure()
                continue
            extra = {"data_fingerprint": data_fingerprint} if step.name == "make_subset" else {}
            made[step.name] = configure(tasks[step.name](**inputs(step), **extra), step.name, cluster)
        made["register"].set_caching_options(False)  # a registry side effect: never replayed from the cache
        return made["evaluate"].outputs["metrics"]

    return training_pipeline


def _get(params: Params, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(params, section), name)
