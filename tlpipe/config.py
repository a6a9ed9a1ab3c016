"""One typed configuration, loaded from `params.yaml` and validated once.

Every step reads its own section (same name as the step) plus the shared keys. A wrong key, type or value
raises `ConfigError` with one line naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tlpipe.errors import ConfigError
from tlpipe.sections import (  # noqa: F401 - the section models are part of this module's interface
    APPLICATION_BACKBONES,
    BUILTIN,
    MIN_IMAGE_SIZE,
    PRETRAIN,
    AugmentConfig,
    DataConfig,
    EvaluateConfig,
    ExtractFeaturesConfig,
    FineTuneConfig,
    Fraction,
    MakeDigitsConfig,
    MakeSubsetConfig,
    ModelConfig,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    PretrainBackboneConfig,
    RegistryConfig,
    StorageConfig,
    TrackingConfig,
    TrainHeadConfig,
    TrainScratchConfig,
    TuneConfig,
    ValidateDataConfig,
    _Section,
)


class Params(_Section):
    """The whole `params.yaml`."""

    seed: int = 42
    deterministic: bool = True
    data: DataConfig = DataConfig()
    storage: StorageConfig = StorageConfig()
    make_digits: MakeDigitsConfig = MakeDigitsConfig()
    make_subset: MakeSubsetConfig = MakeSubsetConfig()
    validate_data: ValidateDataConfig = ValidateDataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    pretrain_backbone: PretrainBackboneConfig = PretrainBackboneConfig()
    extract_features: ExtractFeaturesConfig = ExtractFeaturesConfig()
    train_head: TrainHeadConfig = TrainHeadConfig()
    fine_tune: FineTuneConfig = FineTuneConfig()
    train_scratch: TrainScratchConfig = TrainScratchConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tune: TuneConfig = TuneConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()


def _describe(error: dict[str, Any], raw: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
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
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_params(raw, origin=str(path))


