"""Typed contracts of the files that pass between steps: one model per file, with its name and read/write.

Every artifact is a folder (a DVC output, a KFP artifact's `.path`); the names of the files inside it are
written here and nowhere else. A step reads an upstream file with `Model.read(folder)` and writes its own
with `model.write(folder)`; a missing or malformed file is one line naming it and the step that makes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tlpipe.errors import DataError

# Binary files inside artifact folders (their formats are Keras' and NumPy's own).
MANIFEST = "manifest.csv"  # make_subset: one row per image (tlpipe.data.datasets reads it)
SHARDS_DIR = "shards"  # make_subset: the images, <split>-NNNNN.tfrecord (tlpipe.data.records)
QUARANTINE = "quarantine.csv"
BACKBONE_FILE = "backbone.keras"
HEAD_FILE = "head.keras"
MODEL_FILE = "model.keras"
COPIES_FILE = "copies.npy"  # augment: pre-augmented copies of the training split, copy-major (K*N rows)
METRICS_FILE = "metrics.json"  # numbers only: what `dvc metrics show/diff` and `dvc exp show` compare (in git)
HISTORY_FILE = "history.json"  # one row per epoch: what `dvc plots` draws (in git)
CONFUSION_CSV = "confusion.csv"  # evaluate: one row per test image (actual, predicted) for `dvc plots` (in git)
TRIALS_CSV = "trials.csv"  # tune: one row per trial (in git)
TRANSFERABILITY_CSV = "transferability.csv"  # tune: accuracy vs share frozen (in git)
# Reports people look at (git-ignored; logged to MLflow). One home per name: steps, review and tests use these.
HISTORY_PNG = "history.png"  # a training curve (pretrain_backbone, train_head, fine_tune) or tune's study history
IMPORTANCES_PNG = "importances.png"  # tune: Optuna's parameter importances
TRANSFERABILITY_PNG = "transferability.png"  # tune: the sweep's curve
TRIALS_PNG = "trials.png"  # tune: trials by freeze ratio
CONFUSION_PNG = "confusion.png"  # evaluate
SAMPLES_PNG = "samples.png"  # evaluate: test images with truth and prediction
PREVIEW_PNG = "preview.png"  # augment: augmented training images
VALIDATION_REPORT = "report.json"  # validate_data: the checks and their results
VALIDATION_PAGE = "report.html"  # validate_data: the same, as a page
REVIEW_PAGE = "review.html"  # operators.review: the promotion review
SPLITS = ("train", "val", "test")


def features_file(split: str) -> str:
    """extract_features' file for one split."""
    return f"{split}.npz"


def numbers(data: dict) -> dict:
    """The numeric entries of `data` (what a METRICS_FILE holds: `dvc metrics` compares numbers, not labels)."""
    return {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def write_json(path: str | Path, data: dict | list) -> None:
    """Pretty JSON, creating the folder (reports that no other step reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class Contract(BaseModel):
    """A JSON file inside an artifact folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    FILE: ClassVar[str]
    PRODUCER: ClassVar[str]

    @classmethod
    def read(cls, folder: str | Path):
        """Load and validate `folder/FILE`."""
        path = Path(folder) / cls.FILE
        if not path.is_file():
            raise DataError(f"{path}: not found; run {cls.PRODUCER} first")
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise DataError(f"{path}: {where}: {first['msg']}; rerun {cls.PRODUCER}") from None

    def write(self, folder: str | Path) -> Path:
        """Write `folder/FILE`; returns its path."""
        path = Path(folder) / self.FILE
        write_json(path, self.model_dump(mode="json"))
        return path


class SubsetSummary(Contract):
    """make_subset: what was read and how many images each split holds."""

    FILE: ClassVar[str] = "summary.json"
    PRODUCER: ClassVar[str] = "make_subset"
    source: str
    layout: str
    classes: list[str]
    requested: dict[str, int]
    images: int
    quarantined: int
    ignored_files: int
    # Images placed outside their home split (a split short of its own files borrowed them): the only
    # images a later data version may move between splits (components/make_subset.py: choose_class).
    borrowed: int = 0


class ValidationResult(Contract):
    """validate_data: written only when every expectation held."""

    FILE: ClassVar[str] = "validation.json"
    PRODUCER: ClassVar[str] = "validate_data"
    success: bool
    images: int
    classes: list[str]
    expectations: int
    quarantined: int


class ValidationReport(Contract):
    """validate_data: every check with its result, the quarantined files and the class counts (always written)."""

    FILE: ClassVar[str] = VALIDATION_REPORT
    PRODUCER: ClassVar[str] = "validate_data"
    success: bool
    subset: str
    images: int
    classes: list[str]
    checks: list[dict[str, Any]]  # table, expectation, success, examples (components/validate_data.py: Check)
    quarantine: list[dict[str, str]]
    class_counts: list[dict[str, Any]]


class BackboneInfo(Contract):
    """pretrain_backbone: what the backbone is and what it was trained on."""

    FILE: ClassVar[str] = "backbone.json"
    PRODUCER: ClassVar[str] = "pretrain_backbone"
    architecture: str
    source_classes: list[str]
    source_images: int
    image_size: int
    sha256: str
    val_accuracy: float
    source: str = ""  # the folder (or builtin:...) it was trained on


class FeaturesInfo(Contract):
    """extract_features: classes in output order and the feature width."""

    FILE: ClassVar[str] = "features.json"
    PRODUCER: ClassVar[str] = "extract_features"
    classes: list[str]
    feature_dim: int
    backbone: str
    backbone_sha256: str


class HyperParams(BaseModel):
    """What tuning searches over and fine-tuning uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    freeze_ratio: float
    learning_rate: float
    dropout: float
    head_units: int
    regime: Literal["transfer", "scratch"] = "transfer"  # transfer: pretrained, frozen up to freeze_ratio
    train_bn: bool = False  # let unfrozen BatchNormalization layers adapt (always on for scratch)


class BestParams(Contract):
    """tune: the hyperparameters fine_tune trains with, and where they came from."""

    FILE: ClassVar[str] = "best_params.json"
    PRODUCER: ClassVar[str] = "tune"
    source: Literal["study", "params"]  # params: tuning was off; fine_tune uses its own params
    params: HyperParams | None = None
    study_name: str = ""
    metric: str = ""
    value: float | None = None
    trial: int | None = None
    boundary: str | None = None
    label: str = ""  # what the best trial really is: from scratch, full fine-tuning, transfer (k% frozen), ...
    states: dict[str, int] = {}
    epochs_run: int = 0
    stopped_by: Literal["n_trials", "timeout", "disabled"] = "n_trials"
    # the regimes the study searched; fine_tune's candidates stay within them (frozen features count as transfer)
    regimes: list[Literal["transfer", "scratch"]] = ["transfer", "scratch"]


# The candidate fine_tune handed on, chosen on validation: its own training, or a baseline's model.
Candidate = Literal["fine_tune", "frozen_features", "scratch_baseline"]
_CANDIDATE_WORDS = {
    "fine_tune": "model fine_tune trained",
    "frozen_features": "frozen-features model from train_head",
    "scratch_baseline": "scratch baseline from train_scratch",
}


def candidate_words(name: str) -> str:
    """A handed-on candidate in words: one wording for evaluate's summary, the review and the README table."""
    return _CANDIDATE_WORDS.get(name, name.replace("_", " "))


class TrainedModel(Contract):
    """fine_tune: the MLflow run and model URI of the trained model, its classes and freeze plan."""

    FILE: ClassVar[str] = "run.json"
    PRODUCER: ClassVar[str] = "fine_tune"
    run_id: str
    model_uri: str
    classes: list[str]
    freeze: dict[str, Any]
    hyperparameters: HyperParams
    resumed: bool
    best_epoch: int
    backbone: str = ""  # the backbone's identity (content hash, or application:weights:size)
    chance_level: bool = False
    selected: Candidate = "fine_tune"


class ScratchBaseline(Contract):
    """train_scratch: the from-scratch baseline's hyperparameters (fine_tune weighs it as a candidate)."""

    FILE: ClassVar[str] = "baseline.json"
    PRODUCER: ClassVar[str] = "train_scratch"
    hyperparameters: HyperParams
    classes: list[str]
    best_epoch: int


class EvalMetrics(Contract):
    """evaluate: test-split scores of the final model and the baselines (what `dvc metrics show` shows)."""

    FILE: ClassVar[str] = "evaluation.json"
    PRODUCER: ClassVar[str] = "evaluate"
    accuracy: float
    loss: float
    macro_f1: float
    accuracy_ci95: list[float]
    macro_f1_ci95: list[float]
    frozen_features: dict[str, Any]
    scratch: dict[str, Any] = {}
    fine_tune_gain: float
    test_images: int
    regime: str = "transfer"  # the final model's regime
    handed_on: Candidate = "fine_tune"  # which candidate the final model is (TrainedModel.selected)
    best_baseline: str = ""  # frozen_features or scratch, whichever ranked higher on `best_baseline_chosen_on`
    best_baseline_chosen_on: Literal["validation", "test", ""] = ""
    final_minus_best_baseline: float = 0.0
    baseline_won: bool = False  # the final model trails the best baseline by more than one test image
    # The final model against the best baseline on the same test images (tlpipe.reports.selection.versus):
    # name, delta (test accuracy, final - baseline), mcnemar_p (exact), fixed, broken.
    vs_best_baseline: dict[str, Any] = {}
    validation: dict[str, dict[str, float]] = {}  # candidate -> validation accuracy and loss
    best_on_validation: str = ""  # the candidate ranked first on validation (final, frozen_features, scratch)

    def numbers(self) -> dict[str, Any]:
        """What `dvc metrics` compares (METRICS_FILE): the scores only, no labels or lists; a few columns."""
        out: dict[str, Any] = {
            "accuracy": self.accuracy,
            "accuracy_ci_low": self.accuracy_ci95[0],
            "accuracy_ci_high": self.accuracy_ci95[1],
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "test_images": self.test_images,
            "frozen_features": {"accuracy": self.frozen_features.get("accuracy")},
        }
        if self.scratch:
            out["scratch"] = {"accuracy": self.scratch.get("accuracy")}
        if self.vs_best_baseline:
            out["vs_best_baseline"] = {
                "delta": self.vs_best_baseline.get("delta"),
                "mcnemar_p": self.vs_best_baseline.get("mcnemar_p"),
            }
        return out


class Registration(Contract):
    """register: the version made (or reused) and the gate's decision."""

    FILE: ClassVar[str] = "registration.json"
    PRODUCER: ClassVar[str] = "register"
    model_name: str
    version: str
    reused: bool
    validation_status: Literal["passed", "failed"]
    reasons: list[str]
    test_accuracy: float
    champion_version: str | None
    champion_test_accuracy: float | None
    auto_promoted: bool
    register_run_id: str
    test_set_sha256: str
    # With a champion: tlpipe.reports.stats.compare() on the shared test images (fixed, broken, mcnemar_p,
    # gain, gain_ci95, recall_change_ci95, min_detectable_gain, ...); None when there was no champion.
    comparison: dict[str, Any] | None = None
    experiment: str = ""  # the DVC experiment it ran in (`dvc exp run`); then no alias moves, and with
    # registry.experiments: log (the default) no version is made (version "")
