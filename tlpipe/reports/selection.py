"""Which candidate is best, decided on the validation split, and how the final model fares against it on test.

The candidates are the final model (tune's choice between transfer and scratch, trained by fine_tune), the
frozen-features baseline (train_head) and the from-scratch baseline (train_scratch). Picking the best baseline
by test accuracy and then comparing the final model with it on the same test images would select on the test
set (the comparison would favour the baseline by construction), so the ranking uses validation accuracy
(ties broken by the lower validation loss) and the test split only measures the chosen comparison.
"""

from __future__ import annotations

import numpy as np

from tlpipe.errors import PipelineError
from tlpipe.reports.stats import ALPHA, mcnemar

FINAL = "final"


def rank(validation: dict[str, dict]) -> list[str]:
    """Candidate names, best first: higher validation accuracy, then lower validation loss, then name order.

    Args:
        validation: name -> {"accuracy": ..., "loss": ...} on the validation split.
    """
    return sorted(
        validation, key=lambda name: (-validation[name]["accuracy"], validation[name]["loss"], name != FINAL, name)
    )


def best_baseline(validation: dict[str, dict]) -> str:
    """The baseline (any candidate but the final model) ranked highest on validation."""
    baselines = [name for name in rank(validation) if name != FINAL]
    if not baselines:
        raise PipelineError("no baseline was scored on the validation split; evaluate needs at least one")
    return baselines[0]


def versus(name: str, labels: np.ndarray, final_pred: np.ndarray, baseline_pred: np.ndarray) -> dict:
    """The final model against one baseline on the same test images.

    Returns:
        {"name", "delta": final - baseline test accuracy, "mcnemar_p": exact two-sided McNemar p-value,
        "fixed": images only the final model gets right, "broken": images only the baseline gets right}.
    """
    labels = np.asarray(labels)
    if len(final_pred) != len(labels) or len(baseline_pred) != len(labels):
        raise PipelineError(
            f"the {name} baseline was scored on {len(baseline_pred)} test images and the final model "
            f"on {len(final_pred)}; McNemar's test needs the same {len(labels)} images"
        )
    final_ok, base_ok = np.asarray(final_pred) == labels, np.asarray(baseline_pred) == labels
    test = mcnemar(base_ok, final_ok)  # "champion" = the baseline, "challenger" = the final model
    return {
        "name": name,
        "delta": float(final_ok.mean() - base_ok.mean()) if len(labels) else 0.0,
        "mcnemar_p": test["mcnemar_p"],
        "fixed": test["fixed"],
        "broken": test["broken"],
    }


def significantly_worse(vs: dict | None, alpha: float = ALPHA) -> bool:
    """True when the final model trails its best baseline and McNemar's test says it is no accident."""
    return bool(vs) and vs["delta"] < 0 and vs["mcnemar_p"] < alpha


def describe(vs: dict) -> str:
    """One line: the final model against its best baseline on the test split."""
    verdict = (
        "significantly worse"
        if significantly_worse(vs)
        else "no significant difference"
        if vs["mcnemar_p"] >= ALPHA
        else "significantly better"
    )
    return (
        f"{vs['name']} (best on validation): {100 * vs['delta']:+.1f} points on test, final fixes "
        f"{vs['fixed']} and breaks {vs['broken']} images, McNemar p = {vs['mcnemar_p']:.3g} ({verdict})"
    )
