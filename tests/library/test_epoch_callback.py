"""The epoch callback of tracked steps: per-epoch metrics land in the active MLflow run as each epoch ends."""

from __future__ import annotations

import numpy as np


def test_epoch_metrics_are_written_as_each_epoch_ends(tmp_path, monkeypatch):
    import keras
    import mlflow

    from tlpipe.tracking.runs import epoch_callback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", uri)  # restored after the test
    assert type(epoch_callback()) is keras.callbacks.Callback  # outside a run: nothing to log to
    x, y = np.random.default_rng(0).normal(size=(16, 3)).astype("float32"), np.arange(16) % 2
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    seen = []

    class Peek(keras.callbacks.Callback):  # after the tracking callback: the epoch just ended is already stored
        def on_epoch_end(self, epoch, logs=None):
            active = mlflow.active_run()
            assert active is not None
            run_id = active.info.run_id
            seen.append(len(mlflow.MlflowClient().get_metric_history(run_id, "loss")))

    # its own experiment: the active one an earlier test in this process set lives in another store
    with mlflow.start_run(experiment_id=mlflow.MlflowClient().create_experiment("epoch-callback")) as run:
        model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[epoch_callback(), Peek()])
        model.evaluate(x, y, verbose=0, callbacks=[epoch_callback()])
    assert seen == [1, 2, 3]
    data = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "validation_loss"} <= set(data.metrics)
    assert any(k.startswith("optimizer_") for k in data.params)
