"""The lines `make run` ends on: score and CI, baselines, regime, registry version and alias, the next command."""

from __future__ import annotations

from tlpipe.contracts import EvalMetrics, HyperParams, Registration, TrainedModel
from tlpipe.reports.summary import run_summary


def test_run_summary_names_scores_baselines_version_and_next_command():
    registration = Registration(model_name="digits", version="3", reused=False, validation_status="passed", reasons=[],
                                test_accuracy=0.9667, champion_version="1", champion_test_accuracy=0.9,
                                auto_promoted=False, register_run_id="r", test_set_sha256="t", comparison=None)
    evaluation = EvalMetrics(accuracy=0.9667, loss=0.1, macro_f1=0.96, accuracy_ci95=[0.9, 1.0],
                             macro_f1_ci95=[0.9, 1.0],
                             frozen_features={"accuracy": 0.3667}, scratch={"accuracy": 0.6667,
                                                                            "accuracy_ci95": [0.5, 0.8333]},
                             fine_tune_gain=0.6, test_images=30)
    run = TrainedModel(run_id="x", model_uri="m", classes=["5", "6", "7"], freeze={}, resumed=False, best_epoch=3,
                       hyperparameters=HyperParams(freeze_ratio=0.5000000000000001, learning_rate=0.001, dropout=0.1,
                                                   head_units=16))
    text = "\n".join(run_summary(registration, evaluation, run))
    assert "test accuracy 0.967 (95% CI 0.900-1.000) on 30 images" in text
    assert "freeze ratio 0.50" in text and "0.5000000000000001" not in text
    assert "frozen features + head 0.367" in text and "from scratch 0.667 (95% CI 0.500-0.833)" in text
    assert "digits v3 is @challenger; gate passed (vs @champion v1)" in text
    assert text.splitlines()[-1].strip().endswith('make promote VERSION=3 REASON="..."')
