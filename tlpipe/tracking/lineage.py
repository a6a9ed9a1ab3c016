"""Lineage facts tying a run to its code and data: git commit, content hashes, dvc.lock hashes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tlpipe.contracts import ValidationResult
from tlpipe.data.identity import test_set_id
from tlpipe.fingerprint import content_hash


def git_commit() -> str:
    """The current commit (with '-dirty' when the tree has changes); TLPIPE_GIT_COMMIT (the image's) outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("TLPIPE_GIT_COMMIT", "unknown")
    return head + ("-dirty" if dirty else "")


def dvc_lock_hashes(paths: list[str], lock: Path = Path("dvc.lock"), outs_only: bool = False) -> dict[str, str]:
    """md5 that dvc.lock records for each path (as an output of an earlier stage), where it has one."""
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    recorded = {}
    for stage in stages.values():
        for item in stage.get("outs", []) + ([] if outs_only else stage.get("deps", [])):
            recorded.setdefault(os.path.normpath(item["path"]), item.get("md5", ""))
    return {p: recorded[os.path.normpath(p)] for p in paths if os.path.normpath(p) in recorded}


def _under_dvc() -> bool:
    return "DVC_STAGE" in os.environ  # dvc/stage/run.py sets it (and DVC_ROOT) for every stage command


def _lock_file() -> Path:
    return Path(os.environ.get("DVC_ROOT", ".")) / "dvc.lock"


def lineage_tags(inputs: dict[str, str], validation: str | None) -> dict[str, str]:
    """Tags tying a run to its code and data: git commit, dvc.lock md5 and content hash of each input."""
    tags = {"git_commit": git_commit()}
    # Under `dvc repro` (DVC sets DVC_STAGE for every stage command) an input another stage made has the md5 that
    # DVC recorded in dvc.lock when that stage ran or was verified up to date: no need to hash it again here.
    # Elsewhere (Kubeflow, a step run by hand) the input is hashed once, at the step's start.
    under_dvc = _under_dvc()
    paths = list(inputs.values())
    lock = dvc_lock_hashes(paths, _lock_file(), outs_only=True) if under_dvc else dvc_lock_hashes(paths)
    for name, path in inputs.items():
        if Path(path).exists():
            tags[f"data.{name}.path"] = str(path)
            if not (under_dvc and path in lock):
                tags[f"data.{name}.sha256"] = content_hash(path)
        if path in lock:
            tags[f"data.{name}.dvc_md5"] = lock[path]
    if validation and (Path(validation) / ValidationResult.FILE).is_file():
        result = ValidationResult.read(validation)
        tags["data_validation"] = "passed" if result.success else "failed"
        tags["data_validation.expectations"] = str(result.expectations)
        tags["data_validation.quarantined"] = str(result.quarantined)
    return tags


def subset_lineage(subset: Path, validation: Path, inputs: list[str], backbone: str) -> dict:
    """Git commit, data source, backbone, dvc.lock hashes, sizes per class and split, validation, test-set id."""
    from tlpipe.contracts import SubsetSummary
    from tlpipe.data.datasets import read_manifest

    manifest = read_manifest(subset)
    sizes = manifest.groupby(["split", "class"]).size()
    result = ValidationResult.read(validation).model_dump()
    return {
        "git_commit": git_commit(),
        "test_set_sha256": test_set_id(subset),
        "backbone": backbone,
        "data_source": SubsetSummary.read(subset).source,
        "dvc_lock": dvc_lock_hashes(inputs),
        "subset_sizes": {s: {c: int(n) for c, n in sizes[s].items()} for s in sizes.index.levels[0]},
        "validation": {"status": "passed" if result.pop("success") else "failed", **result},
    }
