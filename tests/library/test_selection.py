"""The best baseline is chosen on validation, measured on test with McNemar, shown in the review, gated on."""

import numpy as np
import pytest
from scipy.stats import binomtest

from components.evaluate import evaluate
from tlpipe.errors import PipelineError
from tlpipe.reports.gate import baseline_reasons
from tlpipe.reports.review_rows import baseline_rows
from tlpipe.reports.selection import best_baseline, rank, significantly_worse, versus
from tlpipe.sections import RegistryConfig

CLASSES = ["a", "b"]


def onehot(pred: np.ndarray) -> np.ndarray:
    """Confident probabilities for the given predicted classes."""
    out = np.full((len(pred), 2), 0.05)
    out[np.arange(len(pred)), pred] = 0.95
    return out


def test_rank_uses_validation_accuracy_then_loss():
    val = {
        "final": {"accuracy": 0.9, "loss": 0.3},
        "scratch": {"accuracy": 0.9, "loss": 0.2},
        "frozen_features": {"accuracy": 0.8, "loss": 0.1},
    }
    assert rank(val) == ["scratch", "final", "frozen_features"]
    assert best_baseline(val) == "scratch"
    with pytest.raises(PipelineError):
        best_baseline({"final": val["final"]})


def test_evaluate_picks_the_baseline_best_on_validation_not_on_test():
    labels = np.array([0, 1] * 20)
    final = labels.copy()
    final[:6] = 1 - final[:6]  # final: 34/40
    scratch = labels.copy()  # scratch: 40/40 on test, but ranked below frozen on validation
    frozen = labels.copy()
    frozen[:2] = 1 - frozen[:2]  # frozen: 38/40
    validation = {
        "final": {"accuracy": 0.95, "loss": 0.2},
        "frozen_features": {"accuracy": 0.97, "loss": 0.1},
        "scratch": {"accuracy": 0.90, "loss": 0.3},
    }
    metrics, _, _ = evaluate(
        labels, onehot(final), onehot(frozen), labels, CLASSES, 0, onehot(scratch), "transfer", validation
    )
    vs = metrics.vs_best_baseline
    assert metrics.best_baseline == vs["name"] == "frozen_features"
    assert metrics.best_baseline_chosen_on == "validation" and metrics.best_on_validation == "frozen_features"
    assert vs["delta"] == pytest.approx(34 / 40 - 38 / 40)
    assert (vs["fixed"], vs["broken"]) == (0, 4)
    assert vs["mcnemar_p"] == pytest.approx(binomtest(0, 4, 0.5).pvalue)
    assert not significantly_worse(vs)  # 4 discordant images cannot show it (p = 0.125)
    written = metrics.model_dump(mode="json")
    assert set(written["vs_best_baseline"]) >= {"name", "delta", "mcnemar_p"}


def test_evaluate_refuses_baselines_scored_on_other_test_images():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(PipelineError, match="extract_features"):
        evaluate(
            labels,
            onehot(labels),
            onehot(labels),
            labels[::-1],
            CLASSES,
            0,
            onehot(labels),
            "transfer",
            {"final": {"accuracy": 1.0, "loss": 0.0}, "scratch": {"accuracy": 1.0, "loss": 0.0}},
        )


def test_significantly_worse_and_the_gate_flag(tmp_path):
    labels = np.zeros(60, int)
    final = labels.copy()
    final[:12] = 1  # the baseline gets all 60, the final model breaks 12 of them: p = 2 * 0.5**12
    vs = versus("scratch", labels, final, labels)
    assert vs["delta"] == pytest.approx(-0.2) and vs["mcnemar_p"] < 0.001 and significantly_worse(vs)
    assert not significantly_worse(versus("scratch", labels, labels, final))  # better, not worse
    validation = {
        "final": {"accuracy": 0.8, "loss": 0.5},
        "frozen_features": {"accuracy": 0.9, "loss": 0.4},
        "scratch": {"accuracy": 1.0, "loss": 0.1},
    }
    metrics, _, _ = evaluate(
        labels, onehot(final), onehot(labels), labels, CLASSES, 0, onehot(labels), "transfer", validation
    )
    metrics.write(tmp_path)
    assert baseline_reasons(RegistryConfig(), tmp_path) == []  # opt-in: off by default
    reasons = baseline_reasons(RegistryConfig(refuse_worse_than_baseline=True), tmp_path)
    assert len(reasons) == 1 and "scratch" in reasons[0] and "refuse_worse_than_baseline" in reasons[0]


def test_review_shows_the_comparison():
    evaluation = {
        "accuracy": 0.9,
        "frozen_features": {"accuracy": 0.8},
        "scratch": {"accuracy": 0.95},
        "vs_best_baseline": {"name": "scratch", "delta": -0.05, "mcnemar_p": 0.03, "fixed": 1, "broken": 7},
    }
    rows = dict(baseline_rows(evaluation))
    line = rows["final vs best baseline (same test images)"]
    assert "scratch" in line and "-5.0 points" in line and "p = 0.03" in line and "significantly worse" in line


def test_a_final_model_that_is_a_baseline_says_so_in_the_metrics_and_the_review(tmp_path):
    """fine_tune handed on train_scratch's model: evaluate records it and the review's final row names it."""
    labels = np.array([0, 1, 1, 0, 1, 0])
    metrics, _, _ = evaluate(
        labels, onehot(labels), onehot(labels), labels, CLASSES, 0, onehot(labels), "scratch", None, "scratch_baseline"
    )
    assert metrics.handed_on == "scratch_baseline" and metrics.vs_best_baseline["mcnemar_p"] == 1.0
    rows = dict(baseline_rows(metrics.model_dump()))
    assert "final model (scratch: the scratch baseline from train_scratch, chosen on validation, this run)" in rows
    plain, _, _ = evaluate(labels, onehot(labels), onehot(labels), labels, CLASSES, 0, onehot(labels), "transfer")
    assert "final model (transfer, this run)" in dict(baseline_rows(plain.model_dump()))
