"""A tuning study's inputs, recipe and name, computed the same way by every tune subcommand and benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlpipe.contracts import HEAD_FILE
from tlpipe.models.backbones import backbone_identity, load_backbone, preprocess_mode, trains_from_scratch
from tlpipe.tuning.trial import Recipe
from tlpipe.tuning.worker import Defaults, Worker, WorkerSetup


def regimes(searched: list[str], backbone: str, weights: str) -> list[str]:
    """The regimes worth searching: an application backbone without weights has nothing to transfer."""
    return ["scratch"] if trains_from_scratch(backbone, weights) else list(searched)


class StudyContext:
    """The study of one tune run: built once from the step's params and its input/scratch folders."""

    def __init__(
        self,
        params: Any,
        *,
        subset: str | Path,
        augmented: str | Path,
        head: str | Path,
        backbone: str,
        cache_dir: str | Path,
        storage: str | None = None,
        worker_index: int = 0,
    ):
        from tlpipe.tuning.study import study_fingerprint

        model = params.model
        self.params, self.cfg = params, params.tune
        self.storage, self.worker_index = storage, worker_index
        self.recipe = Recipe(
            seed=params.seed,
            image_size=model.image_size,
            preprocess=preprocess_mode(backbone),
            batch_size=params.fine_tune.batch_size,
            min_steps_per_epoch=params.fine_tune.min_steps_per_epoch,
            epochs=self.cfg.epochs,
            patience=self.cfg.patience,
            monitor=self.cfg.metric,
            freeze_range=(self.cfg.freeze_ratio[0], self.cfg.freeze_ratio[1]),
        )
        self.regimes = regimes(self.cfg.regimes, backbone, model.weights)
        self.identity = backbone_identity(backbone, model.weights, model.image_size)
        self.head = Path(head) / HEAD_FILE
        self.load_backbone = lambda: load_backbone(
            backbone, model.weights, model.image_size, params.storage.endpoint_url
        )
        self.setup = WorkerSetup(
            cfg=self.cfg,
            recipe=self.recipe,
            defaults=Defaults(model.dropout, model.head_units),
            subset=Path(subset),
            head=self.head,
            augmented=Path(augmented),
            cache_dir=Path(cache_dir),
            load_backbone=self.load_backbone,
            identity=self.identity,
            worker=worker_index,
            regimes=tuple(self.regimes),
        )
        recipe = {
            **self.recipe.__dict__,
            "dropout": model.dropout,
            "head_units": model.head_units,
            "deterministic": params.deterministic,
        }
        fingerprint = study_fingerprint(self.cfg, recipe, Path(subset), Path(augmented), self.head, self.identity)
        self.study_name = f"{self.cfg.study_name}-{fingerprint}"

    def study(self):
        """Create or load the shared study."""
        from tlpipe.tuning.study import create_study

        return create_study(self.cfg, self.study_name, self.params.seed, self.storage, self.worker_index)

    def worker(self) -> Worker:
        """A worker of this study (loads the data and the backbone), its TF ops repeatable like every step's."""
        from tlpipe.models.training import set_determinism

        # Without op determinism two runs of the same trial differ in the last digits of val_loss (multi-threaded
        # CPU kernels), and a study that ranks trials by it may pick another one.
        set_determinism(self.params.seed, self.params.deterministic)
        return Worker(self.setup)
