"""Lineage tags: under `dvc repro` inputs made by another stage take DVC's md5 instead of being hashed again."""

from __future__ import annotations

import yaml

from tlpipe.tracking import lineage


def _project(tmp_path):
    (tmp_path / "data/subset").mkdir(parents=True)
    (tmp_path / "data/subset/manifest.csv").write_text("a,b\n")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/x.png").write_bytes(b"png")
    lock = {
        "schema": "2.0",
        "stages": {
            "make_subset": {
                "deps": [{"path": "raw", "md5": "stale-dep.dir"}],
                "outs": [{"path": "data/subset", "md5": "abc123.dir"}],
            },
            "augment": {"deps": [{"path": "data/subset", "md5": "older.dir"}]},
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_under_dvc_a_stage_output_is_not_hashed_again(tmp_path, monkeypatch):
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "augment")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    hashed = []
    real = lineage.content_hash
    monkeypatch.setattr(lineage, "content_hash", lambda p: hashed.append(str(p)) or real(p))
    tags = lineage.lineage_tags({"subset": "data/subset", "raw": "raw"}, None)
    assert tags["data.subset.dvc_md5"] == "abc123.dir"  # the producer's out, not another stage's old dep
    assert "data.subset.sha256" not in tags
    assert hashed == ["raw"]  # an external input (no stage makes it) is still hashed
    assert tags["data.raw.sha256"] == real("raw")


def test_outside_dvc_every_input_is_hashed_once(tmp_path, monkeypatch):
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    tags = lineage.lineage_tags({"subset": "data/subset"}, None)
    assert tags["data.subset.sha256"] == lineage.content_hash("data/subset")


def test_a_dataset_another_worker_inserted_at_the_same_moment_is_still_linked_to_this_run(tmp_path, monkeypatch):
    """Tuning workers that start together insert the same dataset row at once and the store's unique key fails
    the later insert (seen as `UNIQUE constraint failed: datasets...` from a worker). The row then exists, so
    the retry links it to the run instead of ending the worker."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tlpipe.tracking.runs import log_datasets

    before, uri = mlflow.get_tracking_uri(), f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test, as the URI below is
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("lineage")  # its own: an earlier test may have left another active
    (tmp_path / "subset").mkdir()
    tags = {"data.subset.path": str(tmp_path / "subset"), "data.subset.sha256": "ab" * 32}
    real, calls = mlflow.log_input, []

    def collides_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # the other worker's run wins the insert; ours fails on the unique key
            with mlflow.start_run(experiment_id=experiment, nested=True):
                real(*args, **kwargs)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", collides_once)
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            log_datasets(tags)
        inputs = mlflow.get_run(run.info.run_id).inputs
        assert inputs is not None and len(calls) == 2
        assert [d.dataset.name for d in inputs.dataset_inputs] == ["subset"]
    finally:
        mlflow.set_tracking_uri(before)
