"""The lines `make run` ends on: score and CI, baselines, regime, registry version and alias, the next command."""

from __future__ import annotations

from typing import Literal

from tlpipe.contracts import EvalMetrics, HyperParams, Registration, TrainedModel
from tlpipe.reports.summary import run_summary


def test_run_summary_names_scores_baselines_version_and_next_command():
    registration = Registration(
        model_name="digits",
        version="3",
        reused=False,
        validation_status="passed",
        reasons=[],
        test_accuracy=0.9667,
        champion_version="1",
        champion_test_accuracy=0.9,
        auto_promoted=False,
        register_run_id="r",
        test_set_sha256="t",
        comparison=None,
    )
    evaluation = EvalMetrics(
        accuracy=0.9667,
        loss=0.1,
        macro_f1=0.96,
        accuracy_ci95=[0.9, 1.0],
        macro_f1_ci95=[0.9, 1.0],
        frozen_features={"accuracy": 0.3667},
        scratch={"accuracy": 0.6667, "accuracy_ci95": [0.5, 0.8333]},
        fine_tune_gain=0.6,
        test_images=30,
    )
    run = TrainedModel(
        run_id="x",
        model_uri="m",
        classes=["5", "6", "7"],
        freeze={},
        resumed=False,
        best_epoch=3,
        hyperparameters=HyperParams(freeze_ratio=0.5000000000000001, learning_rate=0.001, dropout=0.1, head_units=16),
    )
    text = "\n".join(run_summary(registration, evaluation, run))
    assert "test accuracy 0.967 (95% CI 0.900-1.000) on 30 images" in text
    assert "freeze ratio 0.50" in text and "0.5000000000000001" not in text
    assert "frozen features + head 0.367" in text and "from scratch 0.667 (95% CI 0.500-0.833)" in text
    assert "digits v3 is @challenger; gate passed (vs @champion v1)" in text
    assert text.splitlines()[-1].strip().endswith('make promote VERSION=3 REASON="..."')


def _registration(version: str, status: Literal["passed", "failed"] = "passed", promoted: bool = False) -> Registration:
    return Registration(
        model_name="digits",
        version=version,
        reused=False,
        validation_status=status,
        reasons=[],
        test_accuracy=0.9,
        champion_version=None,
        champion_test_accuracy=None,
        auto_promoted=promoted,
        register_run_id="r",
        test_set_sha256="t",
        comparison=None,
    )


def test_the_summary_command_reads_the_declared_outputs_and_ends_on_the_next_command(tmp_path):
    """`python -m operators.summary` on fixture outputs placed where the pipeline declaration puts them."""
    import os
    import subprocess
    import sys

    from pipelines.graph import build, path_of
    from pipelines.step import Ref
    from tests.conftest import REPO, write_params
    from tlpipe.config import load_params

    params = write_params(tmp_path / "params.yaml", "builtin:digits")
    steps = build(load_params(params))
    _registration("3").write(tmp_path / path_of(steps, Ref("register", "registration")))
    EvalMetrics(
        accuracy=0.9,
        loss=0.2,
        macro_f1=0.9,
        accuracy_ci95=[0.8, 0.97],
        macro_f1_ci95=[0.8, 0.97],
        frozen_features={"accuracy": 0.5},
        scratch={"accuracy": 0.6},
        fine_tune_gain=0.4,
        test_images=30,
    ).write(tmp_path / path_of(steps, Ref("evaluate", "evaluation")))
    TrainedModel(
        run_id="x",
        model_uri="m",
        classes=["5", "6"],
        freeze={},
        resumed=False,
        best_epoch=2,
        hyperparameters=HyperParams(freeze_ratio=0.25, learning_rate=0.001, dropout=0.1, head_units=16),
    ).write(tmp_path / path_of(steps, Ref("fine_tune", "model")))
    done = subprocess.run(
        [sys.executable, "-m", "operators.summary", "--params", str(params)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.strip().splitlines()
    assert "test accuracy 0.900 (95% CI 0.800-0.970) on 30 images (transfer, freeze ratio 0.25" in lines[1]
    assert "digits v3 is @challenger" in done.stdout
    assert "make review" in lines[-1] and 'make promote VERSION=3 REASON="..."' in lines[-1]
    assert len(lines) <= 6


def test_the_next_command_follows_the_gate_and_auto_promotion():
    run = TrainedModel(
        run_id="x",
        model_uri="m",
        classes=["5", "6"],
        freeze={},
        resumed=False,
        best_epoch=2,
        hyperparameters=HyperParams(freeze_ratio=0.25, learning_rate=0.001, dropout=0.1, head_units=16),
    )
    failed = run_summary(_registration("4", status="failed"), None, run)[-1]
    assert "make review" in failed and 'make promote VERSION=4 REASON="..." FORCE=1' in failed
    promoted = run_summary(_registration("5", promoted=True), None, run)
    assert "v5 is @champion (auto-promoted)" in promoted[-2] and "make status" in promoted[-1]


def test_make_run_ends_with_the_summary():
    from tests.conftest import REPO

    lines = (REPO / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("run:")))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    assert recipe[-1].lstrip("@").split("#")[0].strip() == "python -m operators.summary", recipe
