"""The services a cluster gives every task, started here for `run-local`: MLflow tracking and the study store.

On the cluster, tasks reach MLflow over HTTP and Optuna in PostgreSQL; a task never writes a local database
file in its working directory. `run-local` does the same: an `mlflow server` on loopback for the run (unless
MLFLOW_TRACKING_URI points somewhere already) and an Optuna SQLite file in a folder the pod's user owns.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipelines.isolation import POD_UID, SHARED_ENV, can_isolate
from tlpipe.errors import PipelineError

STARTUP_SECONDS = 180  # a cold `mlflow server` imports a lot; a busy machine takes a while


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def optuna_storage(workdir: Path) -> str:
    """A SQLite study store in `workdir/optuna/`, writable by the pod's user (tuning workers share it)."""
    folder = workdir / "optuna"
    folder.mkdir(parents=True, exist_ok=True)
    if can_isolate():
        os.chown(folder, POD_UID, POD_UID)
        for path in folder.iterdir():
            os.chown(path, POD_UID, POD_UID)
    os.environ[SHARED_ENV] = str(folder.resolve())  # isolated tasks see it, as pods see the study's database
    return f"sqlite:///{folder.resolve() / 'optuna.db'}"


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    """MLFLOW_TRACKING_URI for the tasks: the caller's, else a server on loopback for the duration."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        yield os.environ["MLFLOW_TRACKING_URI"]
        return
    folder = (workdir / "mlflow").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (folder / "server.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_healthy(uri, proc, folder / "server.log")
        print(
            f"run-local: MLflow tracking server at {uri} (store {folder}); `mlflow ui --backend-store-uri "
            f"sqlite:///{folder / 'mlflow.db'}` browses it afterwards",
            flush=True,
        )
        os.environ["MLFLOW_TRACKING_URI"] = uri
        yield uri
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_healthy(uri: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise PipelineError(f"run-local: the MLflow server exited ({tail[0][:200]}); see {log}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise PipelineError(f"run-local: the MLflow server at {uri} did not answer within {STARTUP_SECONDS} s; see {log}")
