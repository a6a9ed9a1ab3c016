"""The generated sources of the Kubeflow components: one per step, the fan-out trio, params and helpers.

`pipelines/kfp_build.py` wires them into the pipeline. Lightweight Python components (not container
components) because `kfp.local.SubprocessRunner` runs only those; KFP ships a component's source text, so
the generated source is registered with `linecache` for `inspect.getsource`.
"""

import linecache
import textwrap
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from pipelines.step import External, Ref, Step

# Typed pipeline parameters -> the params key each one sets (everything else: params_overrides).
TYPED = {
    "image_size": "model.image_size",
    "train_per_class": "make_subset.train_per_class",
    "pretrain_epochs": "pretrain_backbone.epochs",
    "fine_tune_epochs": "fine_tune.epochs",
    "tune_n_trials": "tune.n_trials",
}
FINGERPRINT = "data_fingerprint"  # the uncached task that hashes the data behind data.source
FINGERPRINT_KEYS = ("data", "make_digits", "storage")
CLOSE = "close_run"  # the exit handler: closes the MLflow pipeline run, FAILED when the run failed
CLOSE_KEYS = ("tracking",)


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
    scope: dict[str, Any] = {
        "Input": Input,
        "Output": Output,
        "Artifact": Artifact,
        "Dataset": Dataset,
        "Model": Model,
        "Metrics": Metrics,
        "List": list,
        "NamedTuple": NamedTuple,
        "PipelineTaskFinalStatus": dsl.PipelineTaskFinalStatus,
        "__name__": "tlpipe_components",
    }
    exec(compile(source, filename, "exec", dont_inherit=True), scope)  # noqa: S102 - generated above
    return dsl.component(base_image=image, install_kfp_package=False)(scope[name])


def step_component(step: Step, steps: dict[str, Step], image: str):
    """The component of an ordinary step."""
    args = _signature(step, steps) + [f"{o.name}: Output[{o.kind}]" for o in step.outputs]
    outs = ", ".join(f"{o.name!r}: {o.name}.path" for o in step.outputs)
    values = _values(step)
    if step.fingerprint:
        args.append(f"{FINGERPRINT}: str")  # the raw data's content: busts KFP's cache when the data changes
    body = [
        f"run_step({step.name!r}, params, {{{_flags(step)}}}, {{{outs}}}, {tuple(step.scratch)!r}, "
        f"{step.command!r}, values={{{', '.join(values)}}})"
    ]
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
        "create-study": (
            f"{step.name}_create_study",
            f'''
def {step.name}_create_study({args}, n_workers: int) -> List[int]:
    """Create the study (idempotent); returns the worker indices (integers, as worker_index is typed)."""
    {header}
    run_step({step.name!r}, params, {{{flags}}}, {{}}, (), "create-study", values={{{values}}})
    return list(range(n_workers))
''',
        ),
        "worker": (
            f"{step.name}_worker",
            f'''
def {step.name}_worker({args}, worker_index: int):
    """Take trials of the shared study until its trial budget is spent; a failed trial fails only itself."""
    {header}
    run_step({step.name!r}, params, {{{flags}}}, {{}}, {scratch!r}, "worker",
             values={{{values}, "worker-index": str(worker_index)}})
''',
        ),
        "summarize": (
            f"{step.name}_summarize",
            f'''
def {step.name}_summarize({args}, {out}: Output[Artifact]):
    """The fan-in: the best params (what the next step reads), the study's plots and the sweep."""
    {header}
    run_step({step.name!r}, params, {{{flags}}}, {{{out!r}: {out}.path}}, {scratch!r}, "summarize",
             values={{{values}}})
''',
        ),
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
