"""What a step is: its inputs (another step's output or an external path/URI), outputs and Kubeflow shape.

`pipelines/graph.py` declares the pipeline with these types; `dvc_yaml.py` and `kfp_build.py` read their fields.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Ref:
    """An input produced by another step: its output `output`, optionally a sub-folder of it."""

    step: str
    output: str
    sub: str = ""
    switch: str = ""  # the params key that made this input come from a step (data.source: builtin:digits)


@dataclass(frozen=True)
class External:
    """An input that no step produces: a local path (DVC tracks it) or a URI / model name (passed as is)."""

    value: str
    param: str = ""  # the params key it comes from: dvc.yaml reads it from params.yaml (`${data.source}`)

    @property
    def is_local_path(self) -> bool:
        """Whether DVC can hash it as a local file or folder dependency."""
        if "://" in self.value or self.value.startswith("models:/"):
            return False
        return "/" in self.value or self.value.endswith((".zip", ".keras")) or Path(self.value).exists()

    @property
    def is_s3(self) -> bool:
        """Whether it is an s3:// object or prefix (a DVC external dependency)."""
        return self.value.startswith("s3://")


@dataclass(frozen=True)
class Out:
    """One output folder. `cache=False`: a report DVC leaves in the workspace (not in its cache)."""

    name: str
    path: str
    kind: str = "Dataset"  # the KFP artifact type: Dataset | Model | Artifact
    cache: bool = True


@dataclass(frozen=True)
class Step:
    """One step: `components/<name>.py`, its dvc stage, its params section, its KFP task and its MLflow run."""

    name: str
    inputs: dict[str, Ref | External] = field(default_factory=dict)
    outputs: tuple[Out, ...] = ()
    gpu: bool = False
    scratch: dict[str, str] = field(default_factory=dict)  # flag -> local folder kept between runs (persist)
    metrics: tuple[str, ...] = ()  # "output/file.json": shown by `dvc metrics` and KFP's Metrics
    plots: tuple[tuple[str, dict], ...] = ()  # ("output/file", dvc plot options)
    command: str = ""  # a subcommand placed before the flags (tune: "run")
    # What decides the step's shape on Kubeflow (pipelines/kfp_build.py and platform.py read these fields):
    disk: bool = False  # writes large files: a size-limited emptyDir scratch volume at /tmp on the cluster
    cache: bool = True  # False: a side effect (the registry) that KFP must never replay from its cache
    fanout: bool = False  # an Optuna study: create-study, a ParallelFor of workers, summarize (tune)
    fingerprint: str = ""  # the input whose content keys KFP's cache when it is an external URI

    @property
    def params(self) -> tuple[str, ...]:
        """The params keys the step reads (its module's PARAMS)."""
        return declared_params(self.name)

    def output(self, name: str) -> Out:
        """The output called `name`."""
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(f"step {self.name} has no output {name!r}")


@cache
def declared_params(step: str) -> tuple[str, ...]:
    """`PARAMS` of components/<step>.py, read from the source (the module is not imported)."""
    tree = ast.parse((REPO / "components" / f"{step}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PARAMS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise ValueError(f"components/{step}.py declares no PARAMS tuple")
