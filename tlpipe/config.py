"""One typed configuration, loaded from `params.yaml` and validated once.

Every step reads its own section (same name as the step) plus the shared keys. A wrong key, type or value
raises `ConfigError` with one line naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf
from pydantic import ValidationError, create_model, model_validator

from tlpipe import sections
from tlpipe.errors import ConfigError
from tlpipe.sections import _Section


def section_key(model: type[_Section]) -> str:
    """The params.yaml key of a section model: `MakeDigitsConfig` -> `make_digits`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", model.__name__.removesuffix("Config")).lower()


# Every section model of tlpipe/sections.py, in the order written there: a new section is one class there (and
# its block in params.yaml); Params gets its field from here.
SECTIONS: dict[str, type[_Section]] = {
    section_key(obj): obj
    for obj in vars(sections).values()
    if isinstance(obj, type)
    and issubclass(obj, _Section)
    and obj.__module__ == sections.__name__
    and obj is not _Section
}


class _Shared(_Section):
    """The keys shared by every step; each section of `SECTIONS` is added as a field of the same name."""

    seed: int = 42
    deterministic: bool = True

    if TYPE_CHECKING:  # the section fields are made at import time, so a type checker cannot list them

        def __getattr__(self, name: str) -> Any: ...


# An application backbone without weights trains from scratch; at 5 training images per class mobilenet_v2 stayed
# at chance (0.20) in every arm, at 25 it reached 0.885 (benchmarks/results/data_size_mobilenet.md). Below this
# it is refused before any step runs, with what to do instead.
MIN_SCRATCH_TRAIN_PER_CLASS = 25


class Params(create_model("Params", __base__=_Shared, **{key: (model, model()) for key, model in SECTIONS.items()})):  # type: ignore[misc]
    """The whole `params.yaml`: the shared keys plus one field per section model."""

    @model_validator(mode="after")
    def _untrained_application_needs_data(self) -> Params:
        model, per_class = self.model, self.make_subset.train_per_class
        if model.backbone in sections.APPLICATION_BACKBONES and model.weights == "none":
            if per_class < MIN_SCRATCH_TRAIN_PER_CLASS:
                raise ValueError(
                    f"model.backbone {model.backbone} with model.weights none trains from scratch, and "
                    f"make_subset.train_per_class {per_class} is below {MIN_SCRATCH_TRAIN_PER_CLASS}, where it "
                    "stayed at chance (benchmarks/results/data_size_mobilenet.md); give it weights (model.weights: "
                    f"imagenet, a file, s3:// or models:/ URI), use model.backbone: pretrain, or raise "
                    f"make_subset.train_per_class to {MIN_SCRATCH_TRAIN_PER_CLASS} or more"
                )
        return self


def _describe(error: Mapping[str, Any], raw: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if not key:  # a rule across sections names its own keys
        return msg
    if error["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in error["loc"][:-1])
        target = Params
        for part in error["loc"][:-1]:
            target = target.model_fields[str(part)].annotation
        allowed = ", ".join(target.model_fields) if isinstance(target, type) else "?"
        where = f" in {section}" if section else ""
        return f"unknown key {key!r}{where}; allowed: {allowed}"
    if error["type"] == "missing":
        return f"{key} is missing; add it"
    from tlpipe.redact import redact_text

    return redact_text(f"{key} = {error.get('input')!r}: {msg}")  # a URI's password never reaches the console


def parse_params(raw: dict[str, Any], origin: str = "params") -> Params:
    """Validate a params mapping.

    Raises:
        ConfigError: one line naming the key, the bad value and what is allowed.
    """
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{origin}: {_describe(first, raw)}{extra}") from None


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate `params.yaml`, optionally with dotted-key overrides (e.g. from a KFP parameter)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = with_overrides(raw, overrides)
    return parse_params(raw, origin=str(path))


def parse_value(text: str) -> Any:
    """A command-line value read as YAML (`2` int, `true` bool, `[a, b]` list), `1e-3` as a number too."""
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """`KEY=VALUE` command-line items (`--set fine_tune.epochs=2`) as a dict for `with_overrides`."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: write KEY=VALUE")
        out[key] = parse_value(value)
    return out


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`raw` with overrides applied: dotted keys (`{"fine_tune.epochs": 2}`) and nested mappings alike.

    OmegaConf does the merge (a nested mapping merges into its section instead of replacing it); the input is
    not changed.
    """
    merged = OmegaConf.create(raw)
    for key, value in (overrides or {}).items():
        OmegaConf.update(merged, key, value, merge=True, force_add=True)
    out = OmegaConf.to_container(merged)
    assert isinstance(out, dict)  # OmegaConf.create of a mapping is a DictConfig
    return out  # type: ignore[return-value]
