"""Files and folders: staged writes (a step's outputs appear whole or not at all) and scratch folders.

One staged-write helper serves every writer: a step's output folders (`atomic_dir`), single files
(`atomic_file`: a model checkpoint, a .npy array, a downloaded object). The staging path sits next to the
final one (same filesystem, so the final `os.replace` is atomic) and keeps its suffix (Keras needs `.keras`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tlpipe.errors import failed_outputs

# A pod's scratch emptyDir size limit (a Kubernetes quantity, set by pipelines/platform.py): the node's free
# space is not the volume's, so whatever sizes itself from free space under it reads this instead.
SCRATCH_LIMIT_ENV = "TLPIPE_SCRATCH_LIMIT"


def _staging(path: Path) -> Path:
    _remove_stale(path)
    return path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")


def _remove_stale(path: Path) -> None:
    """Staging leftovers of a killed earlier run of the same output (one step writes an output at a time)."""
    for stale in path.parent.glob(f".{path.stem}.partial-*{path.suffix}"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _replace(staged: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    elif final.exists() or final.is_symlink():
        final.unlink()
    os.replace(staged, final)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a staging folder that replaces `path` only if the block succeeds; else it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = _staging(final)
    staged.mkdir()
    try:
        yield staged
    except BaseException:
        failed_outputs.append(final)
        shutil.rmtree(staged, ignore_errors=True)
        raise
    _replace(staged, final)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a staging file path that replaces `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = _staging(final)
    try:
        yield staged
    except BaseException:
        failed_outputs.append(final)
        staged.unlink(missing_ok=True)
        raise
    _replace(staged, final)


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A temporary folder `<tmp>/tlpipe-<name>-<pid>-*`, removed at the end; ones left by killed runs go first."""
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"tlpipe-{name}-*"):
        pid = stale.name.split("-")[2] if stale.name.count("-") >= 3 else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"tlpipe-{name}-{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a permission refusal means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_default(name: str) -> str:
    """A step's default scratch folder: under the temp dir, never the working directory (read-only in a pod)."""
    return os.path.join(tempfile.gettempdir(), "tlpipe", name)
