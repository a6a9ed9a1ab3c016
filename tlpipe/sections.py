"""The sections of params.yaml, one typed model each (tlpipe/config.py assembles and loads them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN = "builtin:digits"  # data.source / pretrain_backbone.source: the embedded digits (make_digits)
PRETRAIN = "pretrain"  # model.backbone: our own backbone, trained by pretrain_backbone
APPLICATION_BACKBONES = ("vgg16", "inception_v3", "mobilenet_v2", "resnet50", "efficientnet_b0")
# Smallest input side each keras.applications backbone accepts with include_top=False.
MIN_IMAGE_SIZE = {"vgg16": 32, "inception_v3": 75, "mobilenet_v2": 32, "resnet50": 32, "efficientnet_b0": 32}

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the raw images come from (shared by make_subset and validate_data)."""

    source: str = Field(default=BUILTIN, min_length=1)
    layout: Literal["auto", "folders", "flat"] = "auto"


class StorageConfig(_Section):
    """S3 access; credentials never live here (boto3's standard chain reads them)."""

    endpoint_url: str | None = None
    max_attempts: PositiveInt = 5


class MakeDigitsConfig(_Section):
    """The embedded default data set: scikit-learn's bundled digits, split into source/target classes."""

    # a classifier needs two classes on each side (pretrain_backbone on source, the rest on target); a class on
    # both sides has its images split between them (components/make_digits.py)
    source_classes: Annotated[list[Annotated[int, Field(ge=0, le=9)]], Field(min_length=2)] = [0, 1, 2, 3, 4]
    target_classes: Annotated[list[Annotated[int, Field(ge=0, le=9)]], Field(min_length=2)] = [5, 6, 7, 8, 9]
    image_size: Annotated[int, Field(ge=8, le=256)] = 32

    @model_validator(mode="after")
    def _each_once(self) -> MakeDigitsConfig:
        for name in ("source_classes", "target_classes"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} {values} repeats a class; list each once")
        return self


class MakeSubsetConfig(_Section):
    """How many images per class and split, and the safety caps for reading untrusted input."""

    train_per_class: PositiveInt = 100
    val_per_class: PositiveInt = 30
    test_per_class: PositiveInt = 40
    seed: int = 42
    max_pixels: PositiveInt = 40_000_000
    max_zip_bytes: PositiveInt = 20 * 1024**3


class ValidateDataConfig(_Section):
    """Expectations the subset must meet before any training runs."""

    expected_classes: list[str] = []
    min_width: PositiveInt = 8
    min_height: PositiveInt = 8
    max_width: PositiveInt = 8000
    max_height: PositiveInt = 8000
    min_class_ratio: Fraction = 0.5


class AugmentConfig(_Section):
    """Training-time augmentation (the seeds' set). Zero or false turns one off."""

    horizontal_flip: bool = False
    rotation_degrees: Annotated[float, Field(ge=0.0, le=180.0)] = 10.0
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    width_shift: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    height_shift: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    copies: NonNegInt = 2
    preview_samples: Annotated[int, Field(ge=1, le=64)] = 8


class ModelConfig(_Section):
    """Backbone, its weights, the input size and the classifier head."""

    backbone: str = Field(default=PRETRAIN, min_length=1)
    weights: str = "none"
    image_size: Annotated[int, Field(ge=8, le=1024)] = 32
    head_units: PositiveInt = 64
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.backbone == PRETRAIN:
            if self.weights != "none":
                raise ValueError(
                    f"weights {self.weights!r} given for backbone pretrain, which trains its own; use none"
                )
        elif self.backbone in APPLICATION_BACKBONES:
            low = MIN_IMAGE_SIZE[self.backbone]
            if self.image_size < low:
                raise ValueError(f"image_size {self.image_size} is below {low}, the minimum for {self.backbone}")
        elif not self.backbone.endswith(".keras"):
            raise ValueError(
                f"backbone {self.backbone!r} is neither {PRETRAIN}, one of {', '.join(APPLICATION_BACKBONES)} "
                "nor a path/URI to a saved .keras model"
            )
        elif self.weights != "none":
            raise ValueError(f"weights {self.weights!r} given for a .keras backbone, which carries its own; use none")
        return self


class PretrainBackboneConfig(_Section):
    """The embedded default backbone: a small VGG-style CNN trained on the source classes."""

    source: str = BUILTIN  # or a class-folder tree of your own source classes
    filters: Annotated[list[PositiveInt], Field(min_length=1)] = [16, 32, 64]  # one conv block per entry
    epochs: PositiveInt = 6
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 1e-3
    augment: bool = False  # pretrain with the `augment` section's transforms: features that survive them transfer


class ExtractFeaturesConfig(_Section):
    """Frozen-feature extraction."""

    batch_size: PositiveInt = 64


class TrainHeadConfig(_Section):
    """The classifier head on cached features."""

    epochs: PositiveInt = 40
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 1e-3


class FineTuneConfig(_Section):
    """Fine-tuning the backbone + head; freeze_ratio is the share of backbone layers kept frozen."""

    freeze_ratio: Fraction = 0.5
    learning_rate: PositiveFloat = 1e-4
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 32
    # An epoch is at least this many steps (the augmented training split repeated, each pass drawn anew):
    # with 5 images per class an epoch is one step, too short for early stopping to judge.
    min_steps_per_epoch: PositiveInt = 1
    patience: PositiveInt = 4
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    mixed_precision: bool = False
    input: Literal["auto", "memory", "stream"] = "auto"  # auto: memory up to 20,000 images per split


class TrainScratchConfig(_Section):
    """The from-scratch baseline: the backbone's architecture, new weights, the fine_tune budget."""

    learning_rate: PositiveFloat = 1e-3


class EvaluateConfig(_Section):
    """Evaluation on the test split."""

    grid_samples: Annotated[int, Field(ge=1, le=64)] = 16


class TuneConfig(_Section):
    """The Optuna study over freeze ratio and learning rate."""

    enabled: bool = True
    n_trials: PositiveInt = 10
    timeout: PositiveInt | None = None
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    study_name: str = Field(default="tlpipe", min_length=1)
    storage: str = "sqlite:///optuna.db"
    freeze_ratio: tuple[Fraction, Fraction] = (0.0, 1.0)
    learning_rate: tuple[PositiveFloat, PositiveFloat] = (1e-5, 1e-2)
    dropout: tuple[Fraction, Fraction] | None = None
    head_units: tuple[PositiveInt, PositiveInt] | None = None
    epochs: PositiveInt = 10  # the cap per trial; early stopping (patience) ends most trials sooner
    patience: PositiveInt = 3
    regimes: Annotated[list[Literal["transfer", "scratch"]], Field(min_length=1)] = ["transfer", "scratch"]
    search_bn: bool = True  # also try letting the unfrozen BatchNormalization layers adapt
    scratch_epochs: PositiveInt | None = 30  # the scratch regime's own cap per trial (None = epochs): it starts slowly
    scratch_patience: PositiveInt | None = 5  # ... and patience; the pruner waits this many epochs before judging it
    warm_start: NonNegInt = 3  # a new study's first trials: the previous study's best N points (0 = off)
    # The controlled transferability sweep after the study (reports/tune/transferability.csv): true, false, or auto
    # (run only when its estimated cost, printed before it runs, is no more than the study's).
    sweep: bool | Literal["auto"] = "auto"
    sweep_points: Annotated[int, Field(ge=2, le=32)] = 6
    sweep_seeds: Annotated[int, Field(ge=1, le=10)] = 3
    cache: bool = True
    cache_dtype: Literal["float16", "float32"] = "float16"
    cache_max_bytes: PositiveInt = 2 * 1024**3  # memory budget: images / activations above it stream from disk
    cache_disk_bytes: PositiveInt | None = None  # disk budget of --cache-dir; None = 90 % of its free space
    input: Literal["auto", "memory", "stream"] = "auto"  # trial images: auto = memory up to cache_max_bytes
    heartbeat_interval: PositiveInt = 10
    max_retries: NonNegInt = 2
    pool_size: PositiveInt = 2

    @field_validator("freeze_ratio", "learning_rate", "dropout", "head_units")
    @classmethod
    def _ordered(cls, value: Any) -> Any:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"range {list(value)} is reversed; write [low, high]")
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        from tlpipe.redact import holds_credentials

        if holds_credentials(value):
            raise ValueError("storage holds credentials; put them in PGUSER/PGPASSWORD (environment), not params")
        if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://", "journal:")):
            raise ValueError(f"storage {value!r}: use sqlite:///FILE, postgresql://HOST/DB or journal:FILE")
        return value


class TrackingConfig(_Section):
    """MLflow: an embedded SQLite store unless MLFLOW_TRACKING_URI says otherwise."""

    experiment: str = Field(default="tlpipe", min_length=1)
    default_uri: str = "sqlite:///mlflow.db"


class RegistryConfig(_Section):
    """Model registry gate and promotion policy."""

    model_name: str = Field(default="tlpipe-classifier", min_length=1)
    min_accuracy: Fraction = 0.8
    min_improvement: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.0
    min_class_recall: Fraction | None = None
    require_significant: bool = False  # the gain's 95% CI lower bound must exceed min_improvement
    refuse_worse_than_baseline: bool = False  # fail when evaluate's best baseline beats the model (McNemar p < 0.05)
    auto_promote: bool = False
    # Under `dvc exp run` (DVC_EXP_NAME set): log = gate and evidence on the MLflow run, no model version;
    # register = a version tagged with the experiment's name, no alias moved. Plain runs always register.
    experiments: Literal["log", "register"] = "log"
    http_retries: NonNegInt = 3
    http_timeout: PositiveInt = 30
