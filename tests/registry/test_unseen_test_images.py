"""The gate and the review compare challenger and champion only on test images neither trained on.

A champion's registration keeps the sha256 of its train and val images (evidence/image_ids.json); a challenger's
test images the champion trained or early-stopped on are left out of the paired comparison, which says how
many images it used and how many it left out. Real MLflow store (SQLite) in a temporary folder.
"""

from __future__ import annotations

import json

import numpy as np

from tlpipe.reports.champion import paired, trained_on, unseen


def test_test_images_the_champion_trained_on_are_left_out(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)  # explicit: an earlier test may have set a global registry
    experiment = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    ids = tmp_path / "image_ids.json"
    ids.write_text(json.dumps({"train": ["a1", "a2", "t3"], "val": ["v1"], "test": ["x"]}))
    client.log_artifact(run.info.run_id, str(ids), "evidence")
    client.create_registered_model("m")
    version = client.create_model_version(
        "m", f"runs:/{run.info.run_id}/evidence", run.info.run_id, tags={"register_run_id": run.info.run_id}
    )
    seen = trained_on(client, version, tmp_path / "work")
    assert seen == {"a1", "a2", "t3", "v1"}

    test_sha = ["t1", "t2", "t3", "t4", "v1", "t6"]  # a new split: two of the champion's images are test now
    keep = unseen(test_sha, seen)
    assert keep.tolist() == [True, True, False, True, False, True]
    labels = np.array([0, 1, 0, 1, 0, 1])
    eye = np.eye(2, dtype="float32")
    challenger = eye[[0, 1, 0, 1, 1, 0]]  # wrong on images 5 and 6
    champion = eye[[0, 1, 0, 0, 0, 1]]  # wrong on image 4; right on 3 and 5, which it trained on
    scores, comparison = paired(labels, challenger, champion, ["a", "b"], keep)
    assert comparison["shared_test_images"] == 4 and comparison["excluded_seen_by_champion"] == 2
    assert comparison["n"] == 4 and comparison["fixed"] == 1 and comparison["broken"] == 1
    assert scores["accuracy"] == 0.75  # the champion on the 4 images it never saw, not 5 of 6


def test_unknown_training_images_keep_every_test_image():
    assert unseen(["a", "b"], None).all() and unseen(["a", "b"], set()).all()
