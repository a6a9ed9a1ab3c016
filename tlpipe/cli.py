"""The thin CLI boundary shared by every step: argument parsing, one-line errors, atomic outputs."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from tlpipe.config import Params, load_params
from tlpipe.errors import PipelineError
from tlpipe.redact import redact_text

_failed_outputs: list[Path] = []  # outputs whose staging failed, innermost first (named by a disk-full error)


def parser(step: str, doc: str | None, package: str = "components") -> argparse.ArgumentParser:
    """An argument parser with the shared `--params` flag."""
    p = argparse.ArgumentParser(prog=f"python -m {package}.{step}", description=(doc or "").strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a step's main(); a PipelineError becomes one line on stderr and exit code 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # store set-up chatter is not the user's business
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*shuffle=True.*was passed")
    warnings.filterwarnings("ignore", message=r".*is an experimental feature")
    warnings.filterwarnings("ignore", message=r".*is experimental \(supported from")
    # Optuna's TPE with a log-uniform range warns about its quantile estimate; it is expected, not an error.
    warnings.filterwarnings("ignore", message=r".*quantile.*", category=UserWarning)
    try:
        with redacted_console():
            main(argv)
    except PipelineError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        line = resource_error(exc)
        if line is None:
            raise  # a bug: the traceback is what a developer needs
        print(f"error: {redact_text(line)}", file=sys.stderr)
        raise SystemExit(2) from None


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
            return (f"no space left on the device of {folder} ({_free(folder)} free); free some space or "
                    "point the output elsewhere, then rerun (the previous outputs are kept)")
        if tf is not None and isinstance(err, tf.errors.DataLossError):
            records = sys.modules.get("tlpipe.data.records")
            shard = records.damaged_shard() if records else None
            what = text.split("}}")[-1].split("[Op:")[0].strip(" '")  # e.g. "truncated record at 825"
            return f"{shard or 'a shard'}: damaged ({what}); rerun make_subset to write it again"
        if tf is not None and isinstance(err, tf.errors.ResourceExhaustedError):
            return (f"out of memory ({text.splitlines()[0][:200]}); lower the step's batch_size or "
                    "model.image_size, or use a bigger machine")
        if isinstance(err, MemoryError):
            return "out of memory; lower the step's batch_size or model.image_size, or use a bigger machine"
    return None


def _folder_of(err: BaseException) -> Path:
    """The folder a failed write went to: the error's file, else the output the step was staging."""
    name = getattr(err, "filename", None)
    if name:
        return Path(name).parent
    return _failed_outputs[0].parent if _failed_outputs else Path.cwd()


def _free(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"


class _Redacting:
    """A text stream that passes every write through `redact_text` (print and logging write whole messages)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_console() -> Iterator[None]:
    """Every line a step prints or logs to stdout/stderr goes through the one redaction routine.

    Also re-points logging handlers made before the block (e.g. at a library's import) at the wrapped stream.
    """
    saved = sys.stdout, sys.stderr
    wrapped = {id(s): _Redacting(s) for s in saved}
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    handlers = {id(h): h for lg in loggers for h in lg.handlers
                if isinstance(h, logging.StreamHandler) and id(h.stream) in wrapped}.values()
    sys.stdout, sys.stderr = (wrapped[id(s)] for s in saved)
    for handler in handlers:
        handler.setStream(wrapped[id(handler.stream)])
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(handler.stream._stream)
        sys.stdout, sys.stderr = saved


def params_from(args: argparse.Namespace) -> Params:
    """Load the whole params file named by `--params` (operator commands; steps use `step_params`)."""
    return load_params(args.params)


def step_params(args: argparse.Namespace, step: str, keys: tuple[str, ...]):
    """The view of the params file holding exactly `keys` (a step's PARAMS)."""
    from tlpipe.step_params import load_step_params

    return load_step_params(args.params, step, keys)


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
        _failed_outputs.append(final)
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
        _failed_outputs.append(final)
        staged.unlink(missing_ok=True)
        raise
    _replace(staged, final)


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A temporary folder `<tmp>/tlpipe-<name>-<pid>-*`, removed at the end; ones left by killed runs go first."""
    import tempfile

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
