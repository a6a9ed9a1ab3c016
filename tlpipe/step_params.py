"""The params one step may read: exactly the keys its module declares in `PARAMS`, nothing else.

A step loads `params.yaml` through `load_step_params`, which validates the whole file (one-line errors) and
returns a view. Reading a key the step did not declare raises `ConfigError`, so a stage's `params:` list in
dvc.yaml (generated from `PARAMS`) cannot miss a key the code uses. With `TLPIPE_PARAMS_AUDIT=DIR` set, the
keys actually read are written to `DIR/<step>.json` at exit; a test compares them with `PARAMS`.

`tracking` is exempt: it says where MLflow runs go, not what is computed, so pointing at another tracking
server does not make DVC retrain everything.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path
from typing import Any

from tlpipe.config import Params, load_params
from tlpipe.errors import ConfigError
from tlpipe.fingerprint import content_hash

AUDIT_ENV = "TLPIPE_PARAMS_AUDIT"
EXEMPT = ("tracking",)


class StepParams:
    """Attribute access like `Params`, limited to the declared keys (`section` or `section.key`)."""

    def __init__(self, params: Params, step: str, keys: tuple[str, ...], source_hash: str = ""):
        self._params, self._step, self._keys = params, step, tuple(keys)
        self._whole = {k for k in keys if "." not in k}
        self._fields: dict[str, set[str]] = {}
        for key in keys:
            if "." in key:
                section, _, name = key.partition(".")
                self._fields.setdefault(section, set()).add(name)
        self.read: set[str] = set()
        self.source_hash = source_hash

    @property
    def step(self) -> str:
        """The step this view belongs to."""
        return self._step

    def _refuse(self, key: str) -> ConfigError:
        return ConfigError(
            f"step {self._step} reads params key {key!r}, which its PARAMS do not list; "
            f"add it to PARAMS in components/{self._step}.py"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in EXEMPT:
            return getattr(self._params, name)
        if name in self._whole:
            self.read.add(name)
            return getattr(self._params, name)
        if name in self._fields:
            return _SectionView(self, name, getattr(self._params, name), self._fields[name])
        raise self._refuse(name)

    def declared(self) -> dict[str, Any]:
        """The declared keys with their values, flattened to dotted keys (what the step's MLflow run logs)."""
        out: dict[str, Any] = {}
        for key in self._keys:
            section, _, name = key.partition(".")
            value = getattr(self._params, section)
            value = getattr(value, name) if name else value
            if hasattr(value, "model_dump"):
                out.update({f"{key}.{k}": v for k, v in value.model_dump(mode="json").items()})
            else:
                out[key] = value
        return out


class _SectionView:
    """One section of which the step declared only some keys."""

    def __init__(self, owner: StepParams, section: str, value: Any, allowed: set[str]):
        self._owner, self._section, self._value, self._allowed = owner, section, value, allowed

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = f"{self._section}.{name}"
        if name not in self._allowed:
            raise self._owner._refuse(key)
        self._owner.read.add(key)
        return getattr(self._value, name)


def load_step_params(path: str | Path, step: str, keys: tuple[str, ...]) -> StepParams:
    """Validate `path` and return the view of `step`'s keys (audited at exit when TLPIPE_PARAMS_AUDIT is set)."""
    params = load_params(path)
    view = StepParams(params, step, keys, content_hash(path)[:8])
    folder = os.environ.get(AUDIT_ENV)
    if folder:
        atexit.register(_write_audit, Path(folder), view)
    return view


def _write_audit(folder: Path, view: StepParams) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{view.step}.json"
    seen = set(json.loads(target.read_text())) if target.is_file() else set()
    target.write_text(json.dumps(sorted(seen | view.read)), encoding="utf-8")
