"""The JSON files of a registration's evidence and evaluate's per-class report, as contracts.

`register` writes the evidence folder (gate, lineage, image ids) onto its MLflow run; `operators.review`,
the version diff and the champion comparison read it back from there. The names live here, beside the step
contracts in `tlpipe/contracts/__init__.py`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict

from tlpipe.contracts import Contract

EVIDENCE = "evidence"  # the artifact folder on the register run
PREDICTIONS = "predictions.npz"  # register: the challenger's test probabilities and image hashes (evidence)


class PerClassReport(Contract):
    """evaluate: precision / recall / F1 per class of the final model and the frozen features, and the confusion."""

    FILE: ClassVar[str] = "per_class.json"
    PRODUCER: ClassVar[str] = "evaluate"
    fine_tune: dict[str, dict[str, int | float]]  # class -> precision, recall, f1-score, support
    frozen_features: dict[str, dict[str, int | float]]
    confusion: list[list[int]]
    classes: list[str]


class _Evidence(Contract):
    # Evidence is read back from versions registered by older releases: fields added since are ignored there.
    model_config = ConfigDict(extra="ignore", frozen=True)
    PRODUCER: ClassVar[str] = "register"


class GateSummary(_Evidence):
    """register: the gate's decision, both models' scores on the shared test images and the paired comparison."""

    FILE: ClassVar[str] = "gate.json"
    model_name: str
    validation_status: str
    reasons: list[str]
    challenger: dict[str, Any]  # tlpipe.reports.champion.scores(): accuracy, macro_f1, per_class, confusion, ...
    champion: dict[str, Any] | None = None
    champion_version: str | None = None
    comparison: dict[str, Any] | None = None  # tlpipe.reports.stats.compare() on the shared test images
    test_set_sha256: str
    training_run_id: str
    thresholds: dict[str, Any]  # the registry section the gate used


class Lineage(_Evidence):
    """register: where the model came from (tlpipe.tracking.lineage.subset_lineage)."""

    FILE: ClassVar[str] = "lineage.json"
    git_commit: str
    test_set_sha256: str
    backbone: str
    data_source: str
    dvc_lock: dict[str, str]
    subset_sizes: dict[str, dict[str, int]]  # split -> class -> images
    validation: dict[str, Any]  # status and validate_data's counts


class ImageIds(_Evidence):
    """register: the sha256 of every image per split, sorted.

    A champion's train/val images are left out of later comparisons; the version diff counts added and removed ones.
    """

    FILE: ClassVar[str] = "image_ids.json"
    train: list[str] = []
    val: list[str] = []
    test: list[str] = []


GATE_FILE, LINEAGE_FILE, IMAGE_IDS_FILE = GateSummary.FILE, Lineage.FILE, ImageIds.FILE
