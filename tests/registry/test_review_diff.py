"""What the review says differs between two versions, and how it words tuning and lineage (pure functions)."""

from __future__ import annotations

from tlpipe.reports.diff import _flat_lineage, _tuned, image_changes
from tlpipe.reports.review_rows import lineage_rows, tuning_rows


def test_images_added_and_removed_per_split():
    champion = {"train": ["a", "b", "c"], "test": ["x", "y"]}
    challenger = {"train": ["a", "b", "d", "e"], "test": ["x", "y"]}
    assert image_changes(champion, challenger) == [("data: train images", "3", "4 (+2 added, -1 removed)")]
    assert image_changes(None, challenger) == []  # an older registration kept no image ids


def test_lineage_and_tuned_values_flatten_to_comparable_rows():
    lineage = {
        "data_source": "data/raw/x",
        "backbone": "sha256:ab",
        "test_set_sha256": "t1",
        "dvc_lock": {"data/subset": "md5a"},
        "subset_sizes": {"train": {"5": 24, "6": 24}},
    }
    flat = _flat_lineage(lineage)
    assert flat["data: dvc.lock md5 of data/subset"] == "md5a" and flat["data: train images of class 5"] == "24"
    assert _tuned({"freeze_ratio": "0.5000000000000001", "learning_rate": "0.00123456", "regime": "transfer"}) == {
        "trained with: freeze_ratio": "0.5",
        "trained with: learning_rate": "0.00123",
        "trained with: regime": "transfer",
    }


def test_epochs_per_trial_is_a_mean_and_freeze_ratio_is_rounded():
    tuning = {
        "source": "study",
        "params": {"freeze_ratio": 0.5000000000000001},
        "study_name": "s",
        "metric": "val_loss",
        "value": 0.1,
        "trial": 2,
        "states": {"COMPLETE": 8, "PRUNED": 2},
        "epochs_run": 25,
    }
    rows = dict(tuning_rows(tuning, {"freeze_ratio": "0.5000000000000001", "learning_rate": "0.001"}))
    assert rows["epochs per trial"] == "2.5 on average (25 in all over 10 trials)"
    assert rows["trained with"] == "freeze_ratio 0.5, learning_rate 0.001"
    assert "freeze_ratio 0.5," in rows["best hyperparameters"] + ","
    named = dict(lineage_rows({}, {"backbone": "sha256:abc"}, "t", "vgg pretrained on data/raw/x, sha256 abc"))
    assert named["backbone"].startswith("vgg pretrained on data/raw/x")
