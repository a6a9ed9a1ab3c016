"""Shared fixtures: tiny generated images, params files, and servers started on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]


def png(path: Path, seed: int, size: int = 12, mode: str = "L") -> Path:
    """A small distinct image (random pixels: no two files alike)."""
    rng = np.random.default_rng(seed)
    channels = {"L": (size, size), "RGB": (size, size, 3)}[mode]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, channels, dtype=np.uint8), mode=mode).save(path)
    return path


def make_tree(
    root: Path, classes=("a", "b"), per_class: int = 8, layout: str = "folders", ext: str = ".png", seed: int = 0
) -> Path:
    """A class-folder or Kaggle-flat tree of tiny images."""
    for ci, cls in enumerate(classes):
        for i in range(per_class):
            name = f"{cls}/{i}{ext}" if layout == "folders" else f"{cls}.{i}{ext}"
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(seed * 100000 + ci * 1000 + i)
            img = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), mode="RGB")
            img.save(target, format="JPEG" if ext in (".jpg", ".jpeg") else "PNG")
    return root


def write_params(path: Path, source: str | Path, **sections) -> Path:
    """A params.yaml with small defaults; keyword arguments replace whole sections or shared keys."""
    params = {
        "seed": 7,
        "deterministic": True,
        "data": {"source": str(source), "layout": "auto"},
        "make_subset": {"train_per_class": 4, "val_per_class": 2, "test_per_class": 2, "seed": 3},
        "model": {"backbone": "pretrain", "image_size": 16, "head_units": 8, "dropout": 0.1},
        "tracking": {"experiment": "tests", "default_uri": f"sqlite:///{path.parent / 'mlflow.db'}"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def run_cli(step: str, *args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m components.<step>` as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"components.{step}", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_project(root: Path, params: dict | None = None, skip: tuple[str, ...] = ("dvc.lock",), **env_extra) -> dict:
    """This repo's files (tracked and not ignored) in a fresh git repo at `root`; returns the env to run in.

    `params`: dotted overrides written into the copy's params.yaml; `skip`: paths or folder prefixes left out
    (dvc.lock: the copy runs its own `dvc repro`); `env_extra`: variables added to the environment.
    """
    from tlpipe.config import with_overrides

    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file() and not any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in skip):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    if params:
        raw = yaml.safe_load((root / "params.yaml").read_text())
        (root / "params.yaml").write_text(yaml.safe_dump(with_overrides(raw, params), sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        **env_extra,
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded store inside the copy
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, capture_output=True, check=True)
    return env


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback; yields its endpoint URL (dummy credentials set for the session)."""
    from moto.server import ThreadedMotoServer  # pyright: ignore[reportAttributeAccessIssue] (moto's lazy export)

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on loopback (Debian package; run as the postgres user); yields a base URL."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert bins, "PostgreSQL is not installed: run `make system-deps`"
    bindir = bins[-1].parent
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="tlpipe-pg-"))
    shutil.chown(base, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(base / "data"), "-A", "trust", "-U", "app"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(base / "data"),
            "-w",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=60",
            "-l",
            str(base / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    yield {"host": "127.0.0.1", "port": port, "user": "app"}
    subprocess.run(
        [*as_pg, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "fast", "stop"], capture_output=True
    )
    shutil.rmtree(base, ignore_errors=True)


def create_database(pg: dict, name: str) -> str:
    """Create a database on the test server; returns its SQLAlchemy URL."""
    import psycopg2

    conn = psycopg2.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"postgresql+psycopg2://{pg['user']}@{pg['host']}:{pg['port']}/{name}"


TINY = {
    "make_digits": {"source_classes": [0, 1, 2], "target_classes": [5, 6, 7], "image_size": 16},
    "make_subset": {"train_per_class": 24, "val_per_class": 10, "test_per_class": 10, "seed": 3},
    "model": {"backbone": "pretrain", "image_size": 16, "head_units": 16, "dropout": 0.1},
    "pretrain_backbone": {"source": "builtin:digits", "filters": [8, 16], "epochs": 4, "batch_size": 32},
    "train_head": {"epochs": 10, "batch_size": 16},
    "fine_tune": {"epochs": 3, "batch_size": 16, "patience": 2, "freeze_ratio": 0.5, "learning_rate": 0.001},
    "augment": {"copies": 1, "preview_samples": 3},
    "tune": {"n_trials": 3, "epochs": 2, "timeout": None, "heartbeat_interval": 1, "max_retries": 2},
}


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """A small real project (digits at 16 px, 3 + 3 classes) built by the real steps through the pipeline
    declaration, up to train_head: subset, validation, augmented copies, backbone, features and head.
    Tests copy what they modify. Layout as in dvc.yaml (data/subset, models/backbone, models/head, ...)."""
    import keras

    from pipelines.local import run_steps

    root = tmp_path_factory.mktemp("tiny")
    params_file = write_params(root / "params.yaml", "builtin:digits", **TINY)
    raw = yaml.safe_load(params_file.read_text())
    raw["tune"]["storage"] = f"sqlite:///{root / 'optuna.db'}"
    params_file.write_text(yaml.safe_dump(raw))
    run_steps(
        root,
        [
            "make_digits",
            "make_subset",
            "validate_data",
            "augment",
            "pretrain_backbone",
            "extract_features",
            "train_head",
        ],
    )
    keras.backend.clear_session()
    return root
