"""The promotion review's evidence: what `register` writes, what the review reads back, and the page's rows.

`register` writes the evidence folder (`write_evidence`) and logs it to its MLflow run; `operators.review`
downloads it (`collect`), turns it into plain rows and sentences (`context`) and renders the Jinja2
templates (`render_html`, `render_markdown`). `context` takes plain data, so a page can be rendered and
checked without a tracking server. The file names inside the evidence folder are written here only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tlpipe.contracts import METRICS_FILE, BestParams, write_json
from tlpipe.errors import PipelineError
from tlpipe.reports.html import data_uri, render

EVIDENCE = "evidence"  # the artifact folder on the register run
GATE, LINEAGE = "gate.json", "lineage.json"
TUNE, EVALUATE = "tune", "evaluate"  # copies of tune's and evaluate's folders
IMAGES = {"confusion_challenger": "confusion_challenger.png", "confusion_champion": "confusion_champion.png",
          "mistakes": "mistakes.png", "tuning_history": f"{TUNE}/history.png",
          "transferability": f"{TUNE}/transferability.png", "importances": f"{TUNE}/importances.png"}
TRAINING_CURVES = "history.png"  # logged by fine_tune on the training run
VOLATILE = ("effective.", "tracking.", "registry.", "tune.storage", "tune.timeout")


def write_evidence(out: Path, gate: dict, lineage: dict, wrong: tuple, classes: list[str], tune_dir: Path | None,
                   eval_dir: Path | None) -> None:
    """The files the review shows: gate and lineage JSON, confusion matrices, mistakes, tune and evaluate.

    Args:
        out: the evidence folder.
        gate: gate summary (challenger and champion scores, comparison, decision).
        lineage: lineage facts.
        wrong: (images, truth, prediction) of the challenger's mistakes to show.
        classes: class names.
        tune_dir: tune's folder, copied when it exists.
        eval_dir: evaluate's folder, copied when it exists.
    """
    from tlpipe.reports.plots import plot_confusion, plot_samples

    write_json(out / GATE, gate)
    write_json(out / LINEAGE, lineage)
    for who in ("challenger", "champion"):
        if gate.get(who) is not None:
            plot_confusion(np.array(gate[who]["confusion"]), classes, out / IMAGES[f"confusion_{who}"], who)
    images, truth, guess = wrong
    if len(images):
        plot_samples(images, truth, guess, classes, out / IMAGES["mistakes"], 32,
                     title=f"challenger mistakes on the test split ({len(images)} shown)")
    for folder, name in ((tune_dir, TUNE), (eval_dir, EVALUATE)):
        if folder and folder.is_dir():
            shutil.copytree(folder, out / name, ignore=shutil.ignore_patterns(".*"))


def params_diff(challenger: dict[str, str], champion: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, champion value, challenger value) for every training param that differs."""
    keys = sorted(set(challenger) | set(champion))
    return [(k, champion.get(k, "-"), challenger.get(k, "-")) for k in keys
            if challenger.get(k) != champion.get(k) and not k.startswith(VOLATILE)]


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def collect(client, name: str, version_ref: str, work: Path) -> dict:
    """Everything the review shows, as plain data; the evidence files are downloaded into `work`.

    Returns:
        The input of `context`: title, model_name, version, description, aliases, gate, lineage, tuning,
        evaluation, version_tags, champion_tags, current_champion, diff, register_run_id and files (the
        folder holding the evidence).
    """
    from mlflow.exceptions import MlflowException

    from tlpipe.tracking.registry import CHAMPION, alias_version, aliases, get_version

    version = get_version(client, name, version_ref)
    register_run = version.tags.get("register_run_id")
    if not register_run:
        raise PipelineError(f"{name} v{version.version} was not registered by `register` (no register_run_id tag)")
    client.download_artifacts(register_run, EVIDENCE, str(work))
    training = client.get_run(version.tags["training_run_id"])
    try:
        client.download_artifacts(training.info.run_id, TRAINING_CURVES, str(work / EVIDENCE))
    except (MlflowException, OSError) as exc:  # an older run without curves still gets a review, saying so
        print(f"review: no training curves for {name} v{version.version} ({str(exc).splitlines()[0][:120]})")
    files = work / EVIDENCE
    gate = _json(files / GATE)
    if gate is None:
        raise PipelineError(f"{name} v{version.version}: the register run {register_run} has no {EVIDENCE}/{GATE}")
    champion_tags, diff = None, []
    if gate.get("champion_version"):
        try:
            champ = client.get_model_version(name, gate["champion_version"])
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        else:
            champion_tags = dict(champ.tags)
            diff = params_diff(training.data.params, client.get_run(champ.tags["training_run_id"]).data.params)
    tuning = files / TUNE / BestParams.FILE
    current = alias_version(client, name, CHAMPION)
    return {"title": f"Promotion review: {name} v{version.version}", "model_name": name,
            "version": str(version.version), "description": version.description or "",
            "aliases": {alias: v for v, names in aliases(client, name).items() for alias in names},
            "gate": gate, "lineage": _json(files / LINEAGE) or {},
            "tuning": BestParams.read(tuning.parent).model_dump() if tuning.is_file() else None,
            "evaluation": _json(files / EVALUATE / METRICS_FILE), "version_tags": dict(version.tags),
            "champion_tags": champion_tags, "current_champion": str(current.version) if current else None,
            "diff": diff, "register_run_id": register_run, "files": files}


def context(data: dict) -> dict:
    """The templates' context: plain rows and sentences, images as data URIs (None when missing)."""
    gate, files = data["gate"], Path(data["files"])
    champion_version = gate.get("champion_version")
    images = {key: data_uri(files / rel) for key, rel in IMAGES.items()}
    images["training"] = data_uri(files / TRAINING_CURVES)
    return {"title": data["title"], "version": data["version"], "status": gate["validation_status"],
            "reasons": gate["reasons"] or ["all thresholds met"], "verdict": verdict(gate),
            "description": data["description"], "aliases": sorted(data["aliases"].items()),
            "challenger_label": f"challenger v{data['version']}",
            "champion_label": f"champion v{champion_version}" if champion_version else "no champion",
            "has_champion": bool(champion_version), "metrics": metric_rows(gate),
            "baselines": baseline_rows(data["evaluation"]), "classes": class_rows(gate),
            "perfect": gate["challenger"]["accuracy"] >= 1.0, "images": images,
            "tuning": tuning_rows(data["tuning"], data["version_tags"]),
            "tuned": (data["tuning"] or {}).get("source") == "study",
            "lineage": lineage_rows(data["lineage"], data["version_tags"], gate.get("test_set_sha256", "")),
            "sizes": [(split, cls, n) for split, per in data["lineage"].get("subset_sizes", {}).items()
                      for cls, n in per.items()],
            "champion": champion_history(champion_version, data["champion_tags"], data["current_champion"]),
            "diff": data["diff"]}


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
        return (f"The two models are right and wrong on exactly the same {c['n']} test images: this test set "
                "cannot tell them apart.")
    low, high = c["gain_ci95"]
    text = (f"The challenger fixes {c['fixed']} images and breaks {c['broken']} (of {c['n']}); McNemar p = "
            f"{c['mcnemar_p']:.2g}; the gain's 95% CI is [{_points(low)}, {_points(high)}] points: ")
    if c["significant"]:
        better = "better" if c["gain"] > 0 else "worse"
        return text + f"the challenger is {better} than the champion beyond chance on this test set."
    return (text + "the test set is too small to tell the two models apart; with "
            f"{c['n']} images it could detect a difference of about {100 * c['min_detectable_gain']:.1f} points.")


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
        rows.append({"name": cls, "support": row["support"], "cells": cells,
                     "recall_ci": f"[{_points(interval[0])}, {_points(interval[1])}]" if interval else "-"})
    return rows


def baseline_rows(evaluation: dict | None) -> list[tuple[str, str]]:
    """Test accuracies from evaluate: the fine-tuned model, the frozen-features baseline and, if run, scratch."""
    if not evaluation:
        return []
    low, high = evaluation.get("accuracy_ci95", [None, None])
    rows = [("fine-tuned (this pipeline run)", f"{evaluation['accuracy']:.4f}"
             + (f" (95% CI {low:.4f}-{high:.4f})" if low is not None else ""))]
    frozen = evaluation.get("frozen_features") or {}
    if "accuracy" in frozen:
        rows.append(("frozen backbone features + head", f"{frozen['accuracy']:.4f}"))
    scratch = evaluation.get("scratch")
    if scratch is not None:
        value = scratch.get("accuracy") if isinstance(scratch, dict) else scratch
        rows.append(("trained from scratch", _cell(value)))
    return rows


def tuning_rows(tuning: dict | None, tags: dict[str, str]) -> list[tuple[str, str]]:
    """The tuning summary as (item, value) rows, with the hyperparameters the challenger was trained with."""
    trained = [("trained with", ", ".join(f"{k} {tags[k]}" for k in ("freeze_ratio", "learning_rate", "regime")
                                          if k in tags) or "-")]
    if not tuning:
        return [("tuning", "no tuning summary in the evidence"), *trained]
    if tuning["source"] == "params":
        return [("tuning", "off (tune.enabled: false): fine_tune used its own params"), *trained]
    best = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in (tuning.get("params") or {}).items())
    states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(tuning.get("states", {}).items()))
    return [("study", tuning.get("study_name") or "-"),
            ("best", f"{tuning.get('metric')} {_cell(tuning.get('value'))} (trial {_cell(tuning.get('trial'))})"),
            ("best hyperparameters", best or "-"), ("freeze boundary", _cell(tuning.get("boundary"))),
            ("trials", states or "-"), ("epochs per trial", _cell(tuning.get("epochs_run"))),
            ("stopped by", tuning.get("stopped_by", "-")), *trained]


def lineage_rows(lineage: dict, tags: dict[str, str], test_set: str) -> list[tuple[str, str]]:
    """Code, data and backbone identity (from lineage.json, else the version's tags)."""
    rows = [("git commit", lineage.get("git_commit") or tags.get("git_commit", "-")),
            ("data source", lineage.get("data_source") or tags.get("data_source", "not recorded")),
            ("backbone", lineage.get("backbone") or tags.get("backbone", "not recorded")),
            ("data validation", (lineage.get("validation") or {}).get("status", tags.get("data_validation", "-"))),
            ("test set sha256", test_set or "-")]
    return rows + [(f"dvc.lock md5 of {k}", v) for k, v in lineage.get("dvc_lock", {}).items()]


def champion_history(version: str | None, tags: dict[str, str] | None, current: str | None) -> dict:
    """The champion the challenger was compared with: its own gate, and how it got promoted."""
    if not version:
        return {"summary": "No champion: nothing was in production when this version was registered.",
                "rows": [], "forced": False}
    if tags is None:
        return {"summary": f"Champion v{version} no longer exists in the registry.", "rows": [], "forced": False}
    forced = tags.get("promoted_forced") == "true"
    rows = [("validation status", tags.get("validation_status", "not recorded")),
            ("gate reasons", tags.get("validation_reasons", "-")), ("test accuracy", tags.get("test_accuracy", "-")),
            ("promoted", f"by {tags.get('promoted_by', '?')} at {tags.get('promoted_at', '?')}"
             if "promoted_at" in tags else "no promotion recorded"),
            ("promotion reason", tags.get("promoted_reason", "-")),
            ("forced past a failed gate", "yes (--force)" if forced else "no")]
    now = (f" The current @champion is v{current}." if current and current != version
           else "" if current else " There is no @champion now.")
    return {"summary": f"Champion v{version}, the model this challenger was gated against.{now}", "rows": rows,
            "forced": forced}


def render_html(ctx: dict) -> str:
    """The review page (one self-contained file)."""
    return render("review.html.j2", **ctx)


def render_markdown(ctx: dict) -> str:
    """The review's Markdown summary (for a pull request or chat)."""
    return render("review.md.j2", **ctx)
