"""The pipeline, declared once: steps, what each reads and writes, its params keys and whether it needs a GPU.

`dvc.yaml` is generated from this (`python -m pipelines.dvc_yaml`), the Kubeflow pipeline is built from it
(`pipelines/kfp_build.py`), and the tests and benchmarks run steps through it. A step's CLI takes one flag per
input and output, named as here (`--subset data/subset`), plus `--params`. Every artifact is a folder; the file
names inside it belong to `tlpipe/contracts/`.

The shape depends on params in two places, decided when dvc.yaml is generated or the pipeline compiled:
`data.source: builtin:digits` (the embedded default) adds `make_digits`; `model.backbone: pretrain` adds
`pretrain_backbone`, trained on `pretrain_backbone.source`. Any other value is an external input: a local
path (a DVC dependency, hashed by DVC) or a URI (s3://, models:/, a keras.applications name).

The params keys a step reads are declared in the step module itself (`PARAMS = (...)`) and read from its
source here without importing it, so each stage's `params:` list is exactly what the step reads (a test
records the keys every step touches in a real run and compares).
"""

from __future__ import annotations

import heapq
from graphlib import CycleError, TopologicalSorter

from pipelines.step import External, Out, Ref, Step
from tlpipe.config import Params
from tlpipe.contracts import CONFUSION_CSV, HISTORY_FILE, METRICS_FILE, TRANSFERABILITY_CSV, TRIALS_CSV
from tlpipe.sections import BUILTIN, PRETRAIN


def build(params: Params) -> list[Step]:
    """The steps for these params, in run order (`ordered`: from their refs, not from this listing)."""
    return ordered(_declare(params))


def ordered(steps: list[Step]) -> list[Step]:
    """The steps in run order, decided by their `Ref` inputs alone.

    graphlib finds the order and any cycle; among steps that are ready together the smallest name goes first,
    so the order (and the generated dvc.yaml) does not depend on the order the steps are declared in.

    Raises:
        ValueError: a cycle, or a ref to a step that is not declared.
    """
    names = by_name(steps)
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for step in steps:
        needs = {ref.step for ref in step.inputs.values() if isinstance(ref, Ref)}
        unknown = needs - names.keys()
        if unknown:
            raise ValueError(f"step {step.name} reads from undeclared step(s) {sorted(unknown)}; declare them")
        sorter.add(step.name, *needs)
    try:
        sorter.prepare()
    except CycleError as exc:
        raise ValueError(f"the steps' refs form a cycle: {' -> '.join(exc.args[1])}; break it") from None
    ready: list[str] = list(sorter.get_ready())
    heapq.heapify(ready)
    order: list[Step] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(names[name])
        sorter.done(name)
        for new in sorter.get_ready():
            heapq.heappush(ready, new)
    return order


def _declare(params: Params) -> list[Step]:
    """The steps for these params, in any order."""
    digits = params.data.source == BUILTIN
    own_backbone = params.model.backbone == PRETRAIN
    pretrain_digits = own_backbone and params.pretrain_backbone.source == BUILTIN
    steps: list[Step] = []
    if digits or pretrain_digits:
        steps.append(Step("make_digits", outputs=(Out("digits", "data/raw/digits"),)))
    raw = (
        Ref("make_digits", "digits", "target", "data.source") if digits else External(params.data.source, "data.source")
    )
    steps += [
        Step("make_subset", {"raw": raw}, (Out("subset", "data/subset"),), disk=True, fingerprint="raw"),
        Step(
            "validate_data",
            {"subset": Ref("make_subset", "subset")},
            (
                Out("validation", "data/validation", "Artifact"),
                Out("report", "reports/validate_data", "Artifact", cache=False),
            ),
        ),
        Step(
            "augment",
            {"subset": Ref("make_subset", "subset"), "validation": Ref("validate_data", "validation")},
            (Out("augmented", "data/augmented"), Out("preview", "reports/augment", "Artifact", cache=False)),
            disk=True,
        ),
    ]
    if own_backbone:
        source = (
            Ref("make_digits", "digits", "source")
            if pretrain_digits
            else External(params.pretrain_backbone.source, "pretrain_backbone.source")
        )
        steps.append(
            Step(
                "pretrain_backbone",
                {"source": source},
                (
                    Out("backbone", "models/backbone", "Model"),
                    Out("report", "reports/pretrain_backbone", "Artifact", cache=False),
                ),
                gpu=True,
                metrics=(f"report/{METRICS_FILE}",),
            )
        )
        backbone: Ref | External = Ref("pretrain_backbone", "backbone", switch="model.backbone")
    else:
        backbone = External(params.model.backbone, "model.backbone")
    subset, validation = Ref("make_subset", "subset"), Ref("validate_data", "validation")
    head, tuning = Ref("train_head", "head"), Ref("tune", "tuning")
    steps += [
        Step(
            "extract_features",
            {"subset": subset, "validation": validation, "backbone": backbone},
            (Out("features", "data/features"),),
            gpu=True,
            disk=True,
        ),
        Step(
            "train_head",
            {"features": Ref("extract_features", "features"), "validation": validation},
            (Out("head", "models/head", "Model"), Out("report", "reports/train_head", "Artifact", cache=False)),
            metrics=(f"report/{METRICS_FILE}",),
        ),
        Step(
            "tune",
            {"subset": subset, "augmented": Ref("augment", "augmented"), "head": head, "backbone": backbone},
            (Out("tuning", "reports/tune", "Artifact", cache=False),),
            gpu=True,
            scratch={"cache-dir": "checkpoints/tune_cache"},
            command="run",
            disk=True,
            fanout=True,
            plots=(
                (
                    f"tuning/{TRANSFERABILITY_CSV}",
                    {
                        "x": "freeze_ratio",
                        "y": "mean",
                        "template": "linear",
                        "title": "transferability: validation accuracy vs share frozen",
                    },
                ),
                (
                    f"tuning/{TRIALS_CSV}",
                    {
                        "x": "freeze_ratio",
                        "y": "value",
                        "template": "scatter",
                        "title": "tuning trials by freeze ratio",
                    },
                ),
            ),
        ),
        Step(
            "train_scratch",
            {"subset": subset, "validation": validation, "backbone": backbone},
            (
                Out("baseline", "models/scratch", "Model"),
                Out("report", "reports/train_scratch", "Artifact", cache=False),
            ),
            gpu=True,
            disk=True,
            scratch={"workdir": "checkpoints/train_scratch"},
            metrics=(f"report/{METRICS_FILE}",),
        ),
        Step(
            "fine_tune",
            {
                "subset": subset,
                "validation": validation,
                "head": head,
                "backbone": backbone,
                "tuning": tuning,
                "baseline": Ref("train_scratch", "baseline"),  # a candidate: the best on validation is handed on
            },
            (Out("model", "models/fine_tune", "Model"), Out("report", "reports/fine_tune", "Artifact", cache=False)),
            gpu=True,
            disk=True,
            scratch={"workdir": "checkpoints/fine_tune"},
            metrics=(f"report/{METRICS_FILE}",),
            plots=((f"report/{HISTORY_FILE}", {"x": "epoch", "y": "val_accuracy"}),),
        ),
        Step(
            "evaluate",
            {
                "subset": subset,
                "validation": validation,
                "model": Ref("fine_tune", "model"),
                "head": head,
                "features": Ref("extract_features", "features"),
                "baseline": Ref("train_scratch", "baseline"),
            },
            (Out("evaluation", "reports/evaluate", "Artifact", cache=False),),
            metrics=(f"evaluation/{METRICS_FILE}",),
            plots=((f"evaluation/{CONFUSION_CSV}", {"template": "confusion", "x": "actual", "y": "predicted"}),),
        ),
        Step(
            "register",
            {
                "model": Ref("fine_tune", "model"),
                "evaluation": Ref("evaluate", "evaluation"),
                "subset": subset,
                "validation": validation,
                "tuning": tuning,
            },
            (Out("registration", "reports/register", "Artifact", cache=False),),
            cache=False,
        ),
    ]
    return steps


def by_name(steps: list[Step]) -> dict[str, Step]:
    """Steps keyed by name."""
    return {s.name: s for s in steps}


def path_of(steps: list[Step], ref: Ref | External) -> str:
    """The local path (dvc) of an input: the producing step's output folder (+ sub-folder), or the value."""
    if isinstance(ref, External):
        return ref.value
    out = by_name(steps)[ref.step].output(ref.output)
    return f"{out.path}/{ref.sub}" if ref.sub else out.path


def file_path(step: Step, spec: str) -> str:
    """`output/file` of a step -> the file's local path."""
    output, _, name = spec.partition("/")
    return f"{step.output(output).path}/{name}"


def template(ref: External) -> str:
    """`${key}` for an input read from params (DVC templating), else the value itself."""
    return "${" + ref.param + "}" if ref.param else ref.value


def argv(step: Step, steps: list[Step], root: str = "", templated: bool = False) -> list[str]:
    """The step's CLI arguments (after `python -m components.<step>`), paths under `root` when given.

    `templated`: an external input is written as its params key (`${data.source}`), which DVC fills in
    from params.yaml when it runs the stage (dvc.yaml), so an edited path is honoured by plain `dvc repro`.
    """

    def at(path: str) -> str:
        return f"{root}/{path}" if root and not isinstance(path, External) else path

    args = [step.command] if step.command else []
    for name, ref in step.inputs.items():
        value = template(ref) if templated and isinstance(ref, External) else path_of(steps, ref)
        args += [f"--{name}", value if isinstance(ref, External) else at(value)]
    args += [part for out in step.outputs for part in (f"--{out.name}", at(out.path))]
    args += [part for flag, folder in step.scratch.items() for part in (f"--{flag}", at(folder))]
    return args
