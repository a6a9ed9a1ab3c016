"""What a step prints besides its own lines: no TensorFlow start-up chatter, no carriage returns in a log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_params

# What TensorFlow 2.21, absl, oneDNN and the CUDA plugins print at start-up (measured with a clean env).
NOISE = (
    "oneDNN custom operations",
    "absl::InitializeLog",
    "cpu_feature_guard",
    "This TensorFlow binary is",
    "Unable to register",
    "E0000 ",
    "I0000 ",
    "W0000 ",
    "rebuild TensorFlow",
)


def clean_env(**extra: str) -> dict[str, str]:
    """No TF_CPP_MIN_LOG_LEVEL and friends from the Makefile or conftest: what a new shell has."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(REPO), **extra}


def test_a_tensorflow_step_prints_no_start_up_noise_and_its_error_still_shows(tmp_path):
    params = write_params(tmp_path / "params.yaml", "builtin:digits")
    # train_head imports Keras (so TensorFlow) at module level; its features folder does not exist.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.train_head",
            "--params",
            str(params),
            "--features",
            "missing",
            "--validation",
            "missing",
            "--head",
            "head",
            "--report",
            "report",
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    output = proc.stdout + proc.stderr
    assert "\nimport keras\n" in (REPO / "components/train_head.py").read_text()  # so the step imported TF
    assert not [n for n in NOISE if n in output], output
    assert proc.returncode == 2, output
    assert proc.stderr.splitlines() == ["error: missing/features.json: not found; run extract_features first"], output


def fake_tensorflow(root: Path, fails: bool) -> Path:
    """A `tensorflow` package that writes to file descriptor 2 from "C++" while it loads, then maybe fails."""
    pkg = root / "tensorflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'E0000 00:00:1 cuda_dnn.cc:8310] Unable to register cuDNN factory\\n')\n"
        + ("raise ImportError('libcudart.so.12: cannot open shared object file')\n" if fails else "VALUE = 1\n")
    )
    return root


def test_the_import_hides_what_tensorflow_prints_and_replays_it_when_the_import_fails(tmp_path):
    for fails in (False, True):
        fake = fake_tensorflow(tmp_path / str(fails), fails)
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import tlpipe, tensorflow; print(tensorflow.VALUE, type(tensorflow.__loader__).__name__)",
            ],
            env=clean_env(PYTHONPATH=f"{fake}{os.pathsep}{REPO}"),
            capture_output=True,
            text=True,
        )
        if fails:
            assert proc.returncode == 1
            assert "Unable to register cuDNN factory" in proc.stderr  # the diagnosis, written back
            assert "ImportError: libcudart.so.12" in proc.stderr
        else:
            assert proc.returncode == 0 and proc.stderr == "", proc.stderr
            assert proc.stdout.split() == ["1", "SourceFileLoader"]  # the module keeps its real loader


def test_an_explicit_log_level_wins():
    proc = subprocess.run(
        [sys.executable, "-c", "import os, tlpipe; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"],
        env=clean_env(TF_CPP_MIN_LOG_LEVEL="1"),
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip() == "1"


@pytest.mark.slow
def test_steps_write_no_carriage_returns_into_a_log_file(tmp_path):
    """make_subset (our bars), validate_data (GX's bars) and augment (decode bars) with stderr in a file.

    A clean environment, as a new shell: TensorFlow's log level is the one tlpipe sets."""
    from pipelines.graph import argv, build
    from tlpipe.config import load_params

    params = write_params(
        tmp_path / "params.yaml",
        "builtin:digits",
        make_digits={"source_classes": [0, 1], "target_classes": [5, 6], "image_size": 16},
        make_subset={"train_per_class": 24, "val_per_class": 8, "test_per_class": 8, "seed": 3},
        augment={"copies": 1, "preview_samples": 3},
    )
    steps = build(load_params(params))
    log = tmp_path / "run.log"
    for step in steps:
        if step.name not in ("make_digits", "make_subset", "validate_data", "augment"):
            continue
        with log.open("a") as out:
            done = subprocess.run(
                [sys.executable, "-m", f"components.{step.name}", "--params", str(params), *argv(step, steps)],
                cwd=tmp_path,
                env=clean_env(),
                stdout=out,
                stderr=out,
            )
        assert done.returncode == 0, log.read_text()[-3000:]
    text = log.read_bytes()
    assert b"validate_data: all" in text and b"augment: preview" in text
    assert b"\r" not in text, text[:2000]
    # ... and, with tf.data maps running, no C++ line either (e.g. "E0000 ... node_def_util.cc NodeDef mentions").
    assert not [n for n in NOISE if n.encode() in text], text[:3000]


def test_progress_on_a_log_file_is_plain_lines(capsys):
    from tlpipe.console import progress

    with progress(4, "decode", interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 4 and lines[0].startswith("decode: 1/4 img [") and lines[-1].startswith("decode: 4/4 img")
