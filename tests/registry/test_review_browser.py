"""The promotion review page, rendered from plain data (no MLflow) and checked in headless Chromium."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import numpy as np
import pytest

from tlpipe.contracts import BestParams, HyperParams, write_json
from tlpipe.reports.evaluation import scores
from tlpipe.reports.review import context, render_html, render_markdown, write_evidence
from tlpipe.reports.stats import compare

CLASSES = ["cat", "dog", "fox"]
SECTIONS = (
    "summary",
    "metrics",
    "per-class",
    "confusion",
    "mistakes",
    "training",
    "tuning",
    "lineage",
    "champion",
    "params",
)
HOSTILE = '<img src="x" onerror="window.pwned = 1">'  # text from the registry is shown, never run


def one_hot(pred: np.ndarray) -> np.ndarray:
    probs = np.full((len(pred), len(CLASSES)), 0.05)
    probs[np.arange(len(pred)), pred] = 0.9
    return probs


def predictions(n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, champion and challenger predictions: the challenger fixes 7 images and breaks 3."""
    labels = np.arange(n) % len(CLASSES)
    champion = labels.copy()
    champion[:20] = (labels[:20] + 1) % len(CLASSES)  # the champion gets the first 20 wrong
    challenger = champion.copy()
    challenger[:7] = labels[:7]  # fixes 7
    challenger[100:103] = (labels[100:103] + 1) % len(CLASSES)  # breaks 3
    return labels, champion, challenger


def tuning_folder(root: Path) -> Path:
    """tune's folder: best_params.json and three small matplotlib plots."""
    from tlpipe.reports.plots import pyplot

    plt = pyplot()
    root.mkdir(parents=True)
    for name in ("history", "transferability", "importances"):
        fig, ax = plt.subplots(figsize=(4, 2.5))
        ax.plot([0, 0.5, 1], [0.6, 0.9, 0.7], "o-")
        ax.set_title(name)
        fig.savefig(root / f"{name}.png", dpi=60)
        plt.close(fig)
    BestParams(
        source="study",
        params=HyperParams(freeze_ratio=0.5, learning_rate=3e-4, dropout=0.3, head_units=64),
        study_name="tlpipe-digits",
        metric="val_accuracy",
        value=0.93,
        trial=4,
        boundary="block3_pool",
        states={"COMPLETE": 8, "PRUNED": 2},
        epochs_run=6,
    ).write(root)
    return root


def review_data(tmp_path: Path, with_champion: bool = True) -> dict:
    """What `collect` returns, built from constructed predictions and real PNGs written by `write_evidence`."""
    from tlpipe.reports.plots import plot_history

    labels, champion_pred, challenger_pred = predictions()
    challenger = scores(labels, one_hot(challenger_pred), CLASSES)
    champion = scores(labels, one_hot(champion_pred), CLASSES) if with_champion else None
    comparison = (
        compare(champion_pred == labels, challenger_pred == labels, labels, CLASSES, seed=0) if with_champion else None
    )
    gate = {
        "model_name": "digits",
        "validation_status": "passed",
        "reasons": [],
        "challenger": challenger,
        "champion": champion,
        "champion_version": "3" if with_champion else None,
        "comparison": comparison,
        "test_set_sha256": "ab" * 32,
        "training_run_id": "f" * 32,
        "thresholds": {},
    }
    lineage = {
        "git_commit": "0123456789abcdef0123456789abcdef01234567-dirty",
        "test_set_sha256": "ab" * 32,
        "backbone": "sha256:" + "c" * 64,
        "data_source": "s3://bucket/" + "very-long-prefix/" * 8 + "pets.zip",
        "dvc_lock": {"data/subset": "d" * 32 + ".dir"},
        "subset_sizes": {"test": {c: 67 for c in CLASSES}, "train": {c: 100 for c in CLASSES}},
        "validation": {"status": "passed", "images": 600},
    }
    evaluation = tmp_path / "evaluate"
    write_json(
        evaluation / "metrics.json",
        {
            "accuracy": challenger["accuracy"],
            "accuracy_ci95": [0.85, 0.93],
            "frozen_features": {"accuracy": 0.71},
            "scratch": {"accuracy": 0.42},
        },
    )
    files = tmp_path / "evidence"
    rng = np.random.default_rng(0)
    wrong = np.flatnonzero(challenger_pred != labels)
    images = rng.integers(0, 256, (len(wrong), 16, 16, 3)).astype(np.uint8)
    write_evidence(
        files,
        gate,
        lineage,
        (images, labels[wrong], challenger_pred[wrong]),
        CLASSES,
        tuning_folder(tmp_path / "tune"),
        evaluation,
    )
    plot_history(
        {
            "loss": [1.0, 0.5, 0.3],
            "val_loss": [1.1, 0.7, 0.5],
            "accuracy": [0.5, 0.8, 0.9],
            "val_accuracy": [0.5, 0.7, 0.85],
        },
        files / "history.png",
        "fine_tune",
    )
    champion_tags = {
        "validation_status": "failed",
        "validation_reasons": "accuracy below 0.8",
        "promoted_forced": "true",
        "promoted_reason": "hotfix for class 9",
        "promoted_by": "ana",
        "promoted_at": "2026-01-02T03:04:05Z",
        "test_accuracy": "0.8900",
    }
    return {
        "title": "Promotion review: digits v4",
        "model_name": "digits",
        "version": "4",
        "description": f"Backbone fine-tuned. {HOSTILE}",
        "aliases": {"@challenger": "4", "@champion": "3"},
        "gate": gate,
        "lineage": lineage,
        "tuning": BestParams.read(files / "tune").model_dump(),
        "evaluation": {
            "accuracy": challenger["accuracy"],
            "accuracy_ci95": [0.85, 0.93],
            "frozen_features": {"accuracy": 0.71},
            "scratch": {"accuracy": 0.42},
        },
        "version_tags": {"freeze_ratio": "0.5", "learning_rate": "0.0003", "regime": "fine_tune"},
        "champion_tags": champion_tags if with_champion else None,
        "current_champion": "3" if with_champion else None,
        "diff": [("fine_tune.learning_rate", "0.001", "0.0003")] if with_champion else [],
        "register_run_id": "e" * 32,
        "files": files,
    }


def test_page_and_summary_say_it_in_words(tmp_path):
    ctx = context(review_data(tmp_path))
    page, summary = render_html(ctx), render_markdown(ctx)
    for section in SECTIONS:
        assert f"<section id='{section}'>" in page, section
    text = html.unescape(page)
    assert "The challenger fixes 7 images and breaks 3 (of 200); McNemar p = 0.34; the gain's 95% CI is [" in text
    assert "too small to tell the two models apart; with 200 images it could detect a difference of about" in text
    assert HOSTILE not in page and "&lt;img src=" in page  # autoescaped
    assert "frozen backbone features + head" in page and "0.7100" in page and "trained from scratch" in page
    assert "promoted with --force" in page and "hotfix for class 9" in page
    assert "sha256:" + "c" * 64 in page and "pets.zip" in page and "block3_pool" in page
    assert page.count("data:image/png;base64,") == 7
    assert "Gate: **passed**" in summary and "McNemar p = 0.34" in summary and "| champion v3 |" in summary


def test_without_a_champion_no_broken_headers(tmp_path):
    ctx = context(review_data(tmp_path, with_champion=False))
    page, summary = render_html(ctx), render_markdown(ctx)
    assert "no champion" in page and "v-" not in page and "vNone" not in page and "None" not in page
    assert "There is no champion to compare with" in page and "| no champion |" in summary
    assert page.count("data:image/png;base64,") == 6  # no champion confusion matrix


def chromium() -> str:
    """Debian's chromium: `make test` installs it (system-deps), so a missing browser is a failure, not a skip."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is not installed: run `make system-deps`"
    return path


@pytest.mark.slow
def test_review_page_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    page_file = tmp_path / "review.html"
    page_file.write_text(render_html(context(review_data(tmp_path))), encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            for width in (1280, 600):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(page_file.as_uri())
                page.wait_for_load_state("load")
                found = page.evaluate("ids => ids.filter(id => document.getElementById(id) === null)", list(SECTIONS))
                assert found == [], f"sections missing: {found}"
                images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
                assert len(images) == 7 and all(ok for _, ok in images), images
                overflow = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
                assert overflow[0] <= overflow[1], f"page is {overflow[0]}px wide in a {overflow[1]}px window"
                assert page.evaluate("window.pwned === undefined")
                assert "fixes 7 images and breaks 3" in page.inner_text("#summary")
                page.screenshot(path=str(tmp_path / f"review-{width}.png"), full_page=True)
                page.close()
        finally:
            browser.close()
    assert (tmp_path / "review-1280.png").stat().st_size > 10_000
