"""The promotion review's rows and sentences, from plain data (the gate, evaluate's metrics, tags, lineage)."""

from __future__ import annotations

from tlpipe.contracts import candidate_words


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def verdict(gate: dict) -> str:
    """The paired comparison in plain words: what the reviewer can and cannot conclude from this test set."""
    if not gate.get("champion_version"):
        return "There is no champion to compare with: the gate checked the challenger's own thresholds only."
    c = gate.get("comparison")
    if not c:
        return "This registration has no paired comparison (it predates it); compare the accuracies with care."
    if c["fixed"] + c["broken"] == 0:
        return (
            f"The two models are right and wrong on exactly the same {c['n']} test images: this test set "
            "cannot tell them apart."
        )
    low, high = c["gain_ci95"]
    text = (
        f"The challenger fixes {c['fixed']} images and breaks {c['broken']} (of {c['n']}); McNemar p = "
        f"{c['mcnemar_p']:.2g}; the gain's 95% CI is [{_points(low)}, {_points(high)}] points: "
    )
    if c["significant"]:
        better = "better" if c["gain"] > 0 else "worse"
        return text + f"the challenger is {better} than the champion beyond chance on this test set."
    return (
        text + "the test set is too small to tell the two models apart; with "
        f"{c['n']} images it could detect a difference of about {100 * c['min_detectable_gain']:.1f} points."
    )


def _cell(value) -> str:
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def metric_rows(gate: dict) -> list[tuple[str, str, str, str]]:
    """(metric, challenger, champion, delta) on the same test set; '-' without a champion."""
    ch, cp = gate["challenger"], gate.get("champion")
    rows = []
    for key in ("accuracy", "macro_f1", "loss"):
        base = cp[key] if cp else None
        rows.append((key, _cell(ch[key]), _cell(base), f"{ch[key] - base:+.4f}" if base is not None else "-"))
    return rows


def class_rows(gate: dict) -> list[dict]:
    """Per class: support, precision/recall/F1 (champion → challenger) and the recall change's 95% CI."""
    ch, cp = gate["challenger"]["per_class"], (gate.get("champion") or {}).get("per_class", {})
    ci = (gate.get("comparison") or {}).get("recall_change_ci95", {})
    rows = []
    for cls, row in ch.items():
        other = cp.get(cls)
        cells = [f"{other[m]:.3f} → {row[m]:.3f}" if other else f"{row[m]:.3f}" for m in ("precision", "recall", "f1")]
        interval = ci.get(cls)
        rows.append(
            {
                "name": cls,
                "support": row["support"],
                "cells": cells,
                "recall_ci": f"[{_points(interval[0])}, {_points(interval[1])}]" if interval else "-",
            }
        )
    return rows


def _final_label(evaluation: dict) -> str:
    """The final model's regime, and which candidate it is when fine_tune handed on a baseline's model."""
    regime = evaluation.get("regime", "transfer")
    handed_on = evaluation.get("handed_on", "fine_tune")
    return regime if handed_on == "fine_tune" else f"{regime}: the {candidate_words(handed_on)}, chosen on validation"


def baseline_rows(evaluation: dict | None, sizes: dict | None = None) -> list[tuple[str, str]]:
    """The three regimes side by side (test accuracy with 95% CIs), which won, and the scenario signals.

    The seeds' four scenarios (data size x similarity to the source) are read off two numbers: training
    images per class, and frozen-features accuracy relative to scratch (near 1: the source features already
    separate the target classes; well below 1: the domains differ and the features need adapting).
    """
    if not evaluation:
        return []

    def cell(block: dict | None, ci_key: str = "accuracy_ci95") -> str:
        if not block or block.get("accuracy") is None:
            return "-"
        low, high = block.get(ci_key) or (None, None)
        return f"{block['accuracy']:.4f}" + (f" (95% CI {low:.4f}-{high:.4f})" if low is not None else "")

    frozen, scratch = evaluation.get("frozen_features") or {}, evaluation.get("scratch") or {}
    rows = [
        (f"final model ({_final_label(evaluation)}, this run)", cell(evaluation)),
        ("frozen backbone features + head", cell(frozen)),
        ("trained from scratch", cell(scratch)),
    ]
    scores = {
        "final model": evaluation["accuracy"],
        "frozen features": frozen.get("accuracy"),
        "from scratch": scratch.get("accuracy"),
    }
    ranked = sorted(((v, k) for k, v in scores.items() if v is not None), reverse=True)
    rows.append(
        (
            "won on this data",
            ranked[0][1]
            + (
                " (a baseline beats the final model by more than one test image)"
                if evaluation.get("baseline_won")
                else ""
            ),
        )
    )
    vs = evaluation.get("vs_best_baseline")
    if vs:
        from tlpipe.reports.selection import describe

        rows.append(("final vs best baseline (same test images)", describe(vs)))
    if frozen.get("accuracy") is not None and scratch.get("accuracy"):
        rows.append(("similarity signal: frozen features / scratch", f"{frozen['accuracy'] / scratch['accuracy']:.2f}"))
    train = (sizes or {}).get("train", {})
    if train:
        rows.append(("training images per class", f"{min(train.values())}-{max(train.values())}"))
    return rows


def tuning_rows(tuning: dict | None, tags: dict[str, str]) -> list[tuple[str, str]]:
    """The tuning summary as (item, value) rows, with the hyperparameters the challenger was trained with."""
    trained = [
        (
            "trained with",
            ", ".join(f"{k} {_short(tags[k])}" for k in ("freeze_ratio", "learning_rate", "regime") if k in tags)
            or "-",
        )
    ]
    if not tuning:
        return [("tuning", "no tuning summary in the evidence"), *trained]
    if tuning["source"] == "params":
        return [("tuning", "off (tune.enabled: false): fine_tune used its own params"), *trained]
    best = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in (tuning.get("params") or {}).items()
    )
    states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(tuning.get("states", {}).items()))
    return [
        ("study", tuning.get("study_name") or "-"),
        ("best", f"{tuning.get('metric')} {_cell(tuning.get('value'))} (trial {_cell(tuning.get('trial'))})"),
        ("best hyperparameters", best or "-"),
        ("freeze boundary", _cell(tuning.get("boundary"))),
        ("trials", states or "-"),
        ("epochs per trial", _per_trial(tuning)),
        ("stopped by", tuning.get("stopped_by", "-")),
        *trained,
    ]


def _short(value: str) -> str:
    """A float tag at three significant digits (0.5000000000000001 -> 0.5); other text as it is."""
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


def _per_trial(tuning: dict) -> str:
    """Mean epochs per trial, with the total (BestParams.epochs_run counts every trial's epochs)."""
    total, trials = tuning.get("epochs_run") or 0, sum((tuning.get("states") or {}).values())
    if not trials:
        return _cell(total)
    return f"{total / trials:.1f} on average ({total} in all over {trials} trials)"


def lineage_rows(
    lineage: dict, tags: dict[str, str], test_set: str, backbone: str | None = None
) -> list[tuple[str, str]]:
    """Code, data and backbone (what it is, from `backbone`, else its identity) from lineage.json or the tags."""
    rows = [
        ("git commit", lineage.get("git_commit") or tags.get("git_commit", "-")),
        ("data source", lineage.get("data_source") or tags.get("data_source", "not recorded")),
        ("backbone", backbone or lineage.get("backbone") or tags.get("backbone", "not recorded")),
        ("data validation", (lineage.get("validation") or {}).get("status", tags.get("data_validation", "-"))),
        ("test set sha256", test_set or "-"),
    ]
    return rows + [(f"dvc.lock md5 of {k}", v) for k, v in lineage.get("dvc_lock", {}).items()]


def champion_history(version: str | None, tags: dict[str, str] | None, current: str | None) -> dict:
    """The champion the challenger was compared with: its own gate, and how it got promoted."""
    if not version:
        return {
            "summary": "No champion: nothing was in production when this version was registered.",
            "rows": [],
            "forced": False,
        }
    if tags is None:
        return {"summary": f"Champion v{version} no longer exists in the registry.", "rows": [], "forced": False}
    forced = tags.get("promoted_forced") == "true"
    rows = [
        ("validation status", tags.get("validation_status", "not recorded")),
        ("gate reasons", tags.get("validation_reasons", "-")),
        ("test accuracy", tags.get("test_accuracy", "-")),
        (
            "promoted",
            f"by {tags.get('promoted_by', '?')} at {tags.get('promoted_at', '?')}"
            if "promoted_at" in tags
            else "no promotion recorded",
        ),
        ("promotion reason", tags.get("promoted_reason", "-")),
        ("forced past a failed gate", "yes (--force)" if forced else "no"),
    ]
    now = (
        f" The current @champion is v{current}."
        if current and current != version
        else ""
        if current
        else " There is no @champion now."
    )
    when = "the @champion when this review ran" if current == version else "the champion at registration"
    return {
        "summary": f"Champion v{version}, {when}, compared with on the same test images.{now}",
        "rows": rows,
        "forced": forced,
    }
