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

from tlpipe.contracts import HISTORY_PNG, BestParams, EvalMetrics
from tlpipe.contracts.evidence import EVIDENCE, GATE_FILE, LINEAGE_FILE, GateSummary, Lineage
from tlpipe.errors import PipelineError
from tlpipe.reports.html import data_uri, render
from tlpipe.reports.review_rows import (
    baseline_rows,
    champion_history,
    class_rows,
    lineage_rows,
    metric_rows,
    tuning_rows,
    verdict,
)

TUNE, EVALUATE = "tune", "evaluate"  # copies of tune's and evaluate's folders
IMAGES = {
    "confusion_challenger": "confusion_challenger.png",
    "confusion_champion": "confusion_champion.png",
    "mistakes": "mistakes.png",
    "tuning_history": f"{TUNE}/history.png",
    "transferability": f"{TUNE}/transferability.png",
    "importances": f"{TUNE}/importances.png",
}
TRAINING_CURVES = HISTORY_PNG  # logged by fine_tune on the training run
VOLATILE = ("effective.", "tracking.", "registry.", "tune.storage", "tune.timeout")


def write_evidence(
    out: Path, gate: dict, lineage: dict, wrong: tuple, classes: list[str], tune_dir: Path | None, eval_dir: Path | None
) -> None:
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

    GateSummary.model_validate(gate).write(out)
    Lineage.model_validate(lineage).write(out)
    for who in ("challenger", "champion"):
        if gate.get(who) is not None:
            plot_confusion(np.array(gate[who]["confusion"]), classes, out / IMAGES[f"confusion_{who}"], who)
    images, truth, guess = wrong
    if len(images):
        plot_samples(
            images,
            truth,
            guess,
            classes,
            out / IMAGES["mistakes"],
            32,
            title=f"challenger mistakes on the test split ({len(images)} shown)",
        )
    for folder, name in ((tune_dir, TUNE), (eval_dir, EVALUATE)):
        if folder and folder.is_dir():
            shutil.copytree(folder, out / name, ignore=shutil.ignore_patterns(".*"))


def params_diff(challenger: dict[str, str], champion: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, champion value, challenger value) for every training param that differs."""
    keys = sorted(set(challenger) | set(champion))
    return [
        (k, champion.get(k, "-"), challenger.get(k, "-"))
        for k in keys
        if challenger.get(k) != champion.get(k) and not k.startswith(VOLATILE)
    ]


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _refresh(gate: dict, now: dict, files: Path, classes: list[str]) -> dict:
    """The stored gate with the comparison against the current champion (`now`) in place of the registration's."""
    from tlpipe.reports.plots import plot_confusion

    target = files / IMAGES["confusion_champion"]
    target.unlink(missing_ok=True)
    if now["champion"] is not None:
        plot_confusion(np.array(now["champion"]["confusion"]), classes, target, "champion")
    return {
        **gate,
        "validation_status": now["status"],
        "reasons": now["reasons"],
        "challenger": now["challenger"],
        "champion": now["champion"],
        "champion_version": now["champion_version"],
        "comparison": now["comparison"],
        "registered_against": gate.get("champion_version"),
        "registered_status": gate["validation_status"],
    }


def collect(client, name: str, version_ref: str, work: Path, gate_now=None) -> dict:
    """Everything the review shows, as plain data; the evidence files are downloaded into `work`.

    Args:
        client: the registry client.
        name: the registered model.
        version_ref: number or `@alias`.
        work: a scratch folder.
        gate_now: `(version, work) -> dict` re-running the gate against the current `@champion`
            (operators.review.gate_now); without it the page shows the gate of registration time.

    Returns:
        The input of `context`: title, model_name, version, description, aliases, gate, lineage, tuning,
        evaluation, version_tags, champion_tags, current_champion, diff, register_run_id and files (the
        folder holding the evidence).
    """
    from mlflow.exceptions import MlflowException

    from tlpipe.reports.diff import backbone_name, version_diff
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
    if not (files / GATE_FILE).is_file():
        raise PipelineError(f"{name} v{version.version}: the register run {register_run} has no {EVIDENCE}/{GATE_FILE}")
    gate = GateSummary.read(files).model_dump()
    if gate_now is not None:
        gate = _refresh(gate, gate_now(version, work / "now"), files, list(gate["challenger"]["per_class"]))
    champion_tags, diff = None, []
    if gate.get("champion_version"):
        try:
            champ = client.get_model_version(name, gate["champion_version"])
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        else:
            champion_tags = dict(champ.tags)
            diff = version_diff(client, version, champ, work / "diff")
    tuning = files / TUNE / BestParams.FILE
    current = alias_version(client, name, CHAMPION)
    backbone = training.data.tags.get("backbone.description") or backbone_name(
        client, training, version.tags.get("backbone", "")
    )
    return {
        "title": f"Promotion review: {name} v{version.version}",
        "model_name": name,
        "version": str(version.version),
        "description": version.description or "",
        "aliases": {alias: v for v, names in aliases(client, name).items() for alias in names},
        "gate": gate,
        "lineage": Lineage.read(files).model_dump() if (files / LINEAGE_FILE).is_file() else {},
        "tuning": BestParams.read(tuning.parent).model_dump() if tuning.is_file() else None,
        "evaluation": EvalMetrics.read(files / EVALUATE).model_dump()
        if (files / EVALUATE / EvalMetrics.FILE).is_file()
        else None,
        "version_tags": dict(version.tags),
        "champion_tags": champion_tags,
        "current_champion": str(current.version) if current else None,
        "diff": diff,
        "register_run_id": register_run,
        "files": files,
        "backbone": backbone,
    }


def context(data: dict) -> dict:
    """The templates' context: plain rows and sentences, images as data URIs (None when missing)."""
    gate, files = data["gate"], Path(data["files"])
    champion_version = gate.get("champion_version")
    images = {key: data_uri(files / rel) for key, rel in IMAGES.items()}
    images["training"] = data_uri(files / TRAINING_CURVES)
    return {
        "title": data["title"],
        "version": data["version"],
        "status": gate["validation_status"],
        "reasons": gate["reasons"] or ["all thresholds met"],
        "verdict": verdict(gate),
        "description": _description(data["description"], gate),
        "aliases": sorted(data["aliases"].items()),
        "challenger_label": f"challenger v{data['version']}",
        "champion_label": f"champion v{champion_version}" if champion_version else "no champion",
        "has_champion": bool(champion_version),
        "metrics": metric_rows(gate),
        "baselines": baseline_rows(data["evaluation"], data["lineage"].get("subset_sizes")),
        "classes": class_rows(gate),
        "perfect": gate["challenger"]["accuracy"] >= 1.0,
        "images": images,
        "tuning": tuning_rows(data["tuning"], data["version_tags"]),
        "tuned": (data["tuning"] or {}).get("source") == "study",
        "lineage": lineage_rows(
            data["lineage"], data["version_tags"], gate.get("test_set_sha256", ""), data.get("backbone")
        ),
        "sizes": [
            (split, cls, n) for split, per in data["lineage"].get("subset_sizes", {}).items() for cls, n in per.items()
        ],
        "champion": champion_history(champion_version, data["champion_tags"], data["current_champion"]),
        "diff": data["diff"],
    }


def _description(text: str, gate: dict) -> str:
    """The version's description (written at registration), marked as such when the champion has changed."""
    if "registered_against" not in gate or gate["registered_against"] == gate.get("champion_version"):
        return text
    now = f"@champion v{gate['champion_version']}" if gate.get("champion_version") else "no @champion"
    return (
        f"At registration: {text} Since then there is {now}: the gate, metrics and comparison on this page "
        "were re-run against it when this review ran."
    )


def render_html(ctx: dict) -> str:
    """The review page (one self-contained file)."""
    return render("review.html.j2", **ctx)


def render_markdown(ctx: dict) -> str:
    """The review's Markdown summary (for a pull request or chat)."""
    return render("review.md.j2", **ctx)
