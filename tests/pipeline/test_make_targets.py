"""The Makefile's front door: `make help` lists every target, `make clean` keeps the registry."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import REPO


def make(*args: str, cwd=REPO, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_help_lists_dvc_yaml_study_and_clean_registry():
    out = make("help").stdout
    for target in ("dvc.yaml", "study", "clean-registry", "review", "promote"):
        assert f"{target} " in out or f"{target}\x1b" in out, target


def test_clean_keeps_the_registry_and_clean_registry_asks(tmp_path):
    shutil.copy(REPO / "requirements.lock", tmp_path)  # the Makefile hashes it
    for name in ("mlflow.db", "optuna.db"):
        (tmp_path / name).write_text("x")
    for folder in ("mlruns/1", "data", "reports", "models"):
        (tmp_path / folder).mkdir(parents=True)
    done = make("clean", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlruns/1").exists() and (tmp_path / "optuna.db").exists()
    assert "clean-registry" in done.stdout
    refused = make("clean-registry", cwd=tmp_path, stdin="n\n")
    assert refused.returncode != 0 and (tmp_path / "mlflow.db").exists()
    agreed = make("clean-registry", cwd=tmp_path, stdin="y\n")
    assert agreed.returncode == 0, agreed.stderr
    assert not any((tmp_path / n).exists() for n in ("mlflow.db", "mlruns", "optuna.db"))
