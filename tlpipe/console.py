"""What a step prints besides its own lines: TensorFlow's start-up chatter silenced, progress a log file can hold.

`tlpipe/__init__.py` calls `quiet_tensorflow()`, so importing any part of tlpipe (every step, operator and
pipeline entry point does, before TensorFlow) sets this up in every runner: make, DVC, a KFP pod, a test.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator

# Set only when the caller has not chosen: an explicit value always wins.
ENV_DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow's C++ INFO/WARNING/ERROR lines; a failure still raises in Python
    "GRPC_VERBOSITY": "NONE",  # gRPC's "E0000 ... fork_posix.cc" lines when a step forks a child
    "GLOG_minloglevel": "3",  # glog-based native libraries
    # MLflow configures its loggers on import (after run_main could), at INFO: "Creating initial MLflow database
    # tables...", "Experiment with name ... does not exist" on every step of a fresh project.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # MLflow's "Downloading artifacts" tqdm bar (carriage returns in log files; register and review download).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# Not set: TF_ENABLE_ONEDNN_OPTS=0 would also silence the oneDNN notice, but it turns oneDNN's custom ops off,
# which changes the numbers (and the speed) of every model. The notice is held back at import instead.


def quiet_tensorflow() -> None:
    """Default the log-level variables, and hold back what TensorFlow's C++ prints while it is imported."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


@contextlib.contextmanager
def held_stderr() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block; replay it only if the block raises.

    Why the descriptor and not an environment variable: TensorFlow 2.21 logs "WARNING: All log messages before
    absl::InitializeLog() is called are written to STDERR" and the oneDNN notice from C++ while its shared
    libraries load, before TF_CPP_MIN_LOG_LEVEL is read (measured: level 3 still prints them, twice per import);
    GPU builds add the cuDNN/cuFFT/cuBLAS "Unable to register factory" E0000 lines the same way. No setting
    reaches them, so they are caught at the descriptor; if the import fails, they are the diagnosis and are
    written back to stderr before the exception propagates.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to protect
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` through the other finders, and has its import run under `held_stderr()`."""

    busy = False

    def find_spec(self, name, path, target=None):
        if name != "tensorflow" or self.busy:
            return None
        self.busy = True  # the finders after this one find it; this one answers None meanwhile
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec, spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """Wraps the real loader for the import only; the module keeps the real loader afterwards."""

    def __init__(self, spec, loader) -> None:
        self.spec, self.loader = spec, loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            with held_stderr():
                self.loader.exec_module(module)
        finally:
            self.spec.loader = module.__loader__ = self.loader


def progress(total: int, desc: str, unit: str = "img", interval: float = 30.0):
    """A tqdm bar on a terminal; in a log file (stderr not a TTY), one plain line every `interval` seconds.

    tqdm redraws its bar with carriage returns, which turns a captured log into one endless line; its own
    `disable=None` would drop the progress of long work from the log entirely, so on a non-terminal this keeps
    tqdm's counting and rate and prints them as lines (`display` is tqdm's documented override point).
    """
    from tqdm import tqdm

    class _Lines(tqdm):
        def display(self, msg=None, pos=None):
            if msg == "" or not self.n:  # "" is tqdm clearing a finished bar (False: no "\r" after it)
                return False
            self.fp.write(f"{self.__str__()}\n")
            self.fp.flush()
            return True

    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    return _Lines(
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        mininterval=interval,
        maxinterval=interval,
        bar_format="{desc}: {n_fmt}/{total_fmt} " + unit + " [{elapsed}<{remaining}, {rate_fmt}]",
    )
