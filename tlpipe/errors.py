"""Domain errors: one line for a person, raised by cores and printed by the CLI boundary."""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

failed_outputs: list[Path] = []  # outputs whose staging failed (tlpipe.cli.atomic_*), innermost first


class PipelineError(Exception):
    """A problem with the user's input or environment that the user can fix."""


class ConfigError(PipelineError):
    """A wrong key, type or value in params."""


class DataError(PipelineError):
    """Bad or insufficient input data."""


def resource_error(exc: BaseException) -> str | None:
    """One line for a full disk, exhausted memory or a damaged file read by TensorFlow; None for anything else.

    TensorFlow raises its own types (ResourceExhaustedError from a shard writer on a full disk, DataLossError
    from a truncated record) with multi-line messages; they are matched without importing TensorFlow.
    """
    tf = sys.modules.get("tensorflow")
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        text = str(err)
        if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in text:
            folder = _folder_of(err)
            return (
                f"no space left on the device of {folder} ({_free(folder)} free); free some space or "
                "point the output elsewhere, then rerun (the previous outputs are kept)"
            )
        if tf is not None and isinstance(err, tf.errors.DataLossError):
            records = sys.modules.get("tlpipe.data.records")
            shard = records.damaged_shard() if records else None
            what = text.split("}}")[-1].split("[Op:")[0].strip(" '")  # e.g. "truncated record at 825"
            return f"{shard or 'a shard'}: damaged ({what}); rerun make_subset to write it again"
        if tf is not None and isinstance(err, tf.errors.ResourceExhaustedError):
            return (
                f"out of memory ({text.splitlines()[0][:200]}); lower the step's batch_size or "
                "model.image_size, or use a bigger machine"
            )
        if isinstance(err, MemoryError):
            return "out of memory; lower the step's batch_size or model.image_size, or use a bigger machine"
    return None


def _folder_of(err: BaseException) -> Path:
    """The folder a failed write went to: the error's file, else the output the step was staging."""
    name = getattr(err, "filename", None)
    if name:
        return Path(name).parent
    return failed_outputs[0].parent if failed_outputs else Path.cwd()


def _free(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
