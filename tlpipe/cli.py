"""The thin CLI boundary shared by every step: argument parsing and one-line errors (files: tlpipe/fs.py)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator

from tlpipe.config import Params, load_params
from tlpipe.errors import PipelineError, resource_error
from tlpipe.redact import redact_text, redacted_console

GRACE_SECONDS = 3.0  # after SIGINT/SIGTERM, the time a step gets to stop by itself before it is ended


def parser(step: str, doc: str | None, package: str = "components") -> argparse.ArgumentParser:
    """An argument parser with the shared `--params` flag."""
    p = argparse.ArgumentParser(
        prog=f"python -m {package}.{step}",
        description=(doc or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run_main(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a step's main(); a PipelineError, a full disk or a signal becomes one line on stderr.

    Exit codes: 2 for an error the user can fix, 128 + the signal number for SIGINT/SIGTERM.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # store set-up chatter is not the user's business
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*shuffle=True.*was passed")
    warnings.filterwarnings("ignore", message=r".*is an experimental feature")
    warnings.filterwarnings("ignore", message=r".*is experimental \(supported from")
    # Optuna's TPE with a log-uniform range warns about its quantile estimate; it is expected, not an error.
    warnings.filterwarnings("ignore", message=r".*quantile.*", category=UserWarning)
    stop = _Stop()
    try:
        with redacted_console(), stopped_by_signals(stop):
            main(argv)
    except PipelineError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        stop.announce()
        raise SystemExit(stop.code) from None
    except Exception as exc:
        line = resource_error(exc)
        if line is None:
            raise  # a bug: the traceback is what a developer needs
        print(f"error: {redact_text(line)}", file=sys.stderr)
        raise SystemExit(2) from None


class _Stop:
    """What a signal asked for: the exit code, and the one line, printed once (by the step or the watchdog)."""

    def __init__(self) -> None:
        self.code, self._printed = 130, threading.Lock()

    def announce(self) -> None:
        if self._printed.acquire(blocking=False):
            name = signal.Signals(self.code - 128).name
            print(
                f"error: interrupted ({name}); outputs of this step were not replaced, rerun to finish",
                file=sys.stderr,
                flush=True,
            )


@contextlib.contextmanager
def stopped_by_signals(stop: _Stop, grace: float = GRACE_SECONDS) -> Iterator[_Stop]:
    """SIGINT and SIGTERM stop the step and its child processes within `grace` seconds, in one line.

    The signal becomes KeyboardInterrupt in the main thread (staging removed, the MLflow run closed). TensorFlow
    can hold the main thread in native code for long; the C-level handler writes the signal to a wake-up pipe at
    once, so a watchdog thread passes the signal on to the children and ends the process after `grace` seconds
    if it has not ended by itself. Python's own handler would not run until the native call returns.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    read, write = os.pipe()
    os.set_blocking(write, False)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def interrupt(signum, frame):
        stop.code = 128 + signum
        raise KeyboardInterrupt

    def watchdog() -> None:
        while (got := os.read(read, 1)) and got[0] not in (signal.SIGINT, signal.SIGTERM):
            pass
        if not got:
            os.close(read)
            return  # the step ended: the pipe was closed
        stop.code = 128 + got[0]
        _signal_children(got[0])
        time.sleep(grace)
        stop.announce()
        os._exit(stop.code)

    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    for sig in saved:
        signal.signal(sig, interrupt)
    threading.Thread(target=watchdog, name="tlpipe-signal-watchdog", daemon=True).start()
    try:
        yield stop
    except KeyboardInterrupt:
        _signal_children(stop.code - 128)  # again: the watchdog may not have run yet
        raise
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        os.close(write)  # the watchdog reads EOF and ends


def _signal_children(signum: int) -> None:
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.send_signal(signum)


def params_from(args: argparse.Namespace) -> Params:
    """Load the whole params file named by `--params` (operator commands; steps use `step_params`)."""
    return load_params(args.params)


def step_params(args: argparse.Namespace, step: str, keys: tuple[str, ...]):
    """The view of the params file holding exactly `keys` (a step's PARAMS)."""
    from tlpipe.step_params import load_step_params

    return load_step_params(args.params, step, keys)
