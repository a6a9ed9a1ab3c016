"""pretrain_backbone: the source backbone, optionally trained on augmented source images."""

from __future__ import annotations

import numpy as np

from components.pretrain_backbone import pretrain
from tests.conftest import make_tree
from tlpipe.sections import AugmentConfig, PretrainBackboneConfig

SHIFTS = AugmentConfig(rotation_degrees=10, zoom=0.1, width_shift=0.1, height_shift=0.1)


def _weights(root, augment: bool) -> tuple[list[np.ndarray], list[str]]:
    cfg = PretrainBackboneConfig(filters=[4], epochs=2, batch_size=8, augment=augment)
    backbone, metrics = pretrain(cfg, 12, 0, True, root, SHIFTS)
    assert metrics["source_classes"] == ["a", "b"] and len(metrics["history"]["loss"]) == 2
    return backbone.get_weights(), [layer.name for layer in backbone.layers]


def test_augment_trains_on_transformed_images_and_the_backbone_stays_the_plain_conv_base(tmp_path):
    root = make_tree(tmp_path / "source", per_class=12)
    plain, plain_layers = _weights(root, augment=False)
    again, _ = _weights(root, augment=False)
    augmented, augmented_layers = _weights(root, augment=True)
    assert all(np.array_equal(a, b) for a, b in zip(plain, again, strict=True))  # seeded: the same run twice
    assert any(not np.array_equal(a, b) for a, b in zip(plain, augmented, strict=True))  # other inputs, other weights
    assert augmented_layers == plain_layers and "augment" not in augmented_layers  # nothing to strip when reused
