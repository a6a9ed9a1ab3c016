"""compile_for builds a model's training state up front, so each fit traces its train step once."""

import keras
import numpy as np
import tensorflow as tf

from tlpipe.models.training import compile_for


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((6, 6, 3)), keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")]
    )


def _fit(model: keras.Model, data: tf.data.Dataset) -> tuple[int, list[float]]:
    """(train-step traces, per-epoch losses) of a 3-epoch fit."""
    traces, step = [0], model.train_step

    def counted(batch):
        traces[0] += 1  # Python runs only while TensorFlow traces
        return step(batch)

    model.train_step = counted
    history = model.fit(data, epochs=3, verbose=0)
    return traces[0], history.history["loss"]


def test_compile_for_traces_the_train_step_once_and_trains_the_same():
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 6, 6, 3), dtype=np.float32), rng.integers(0, 4, 40)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # a short last batch too
    plain = _model()
    plain.compile(keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    plain_traces, plain_loss = _fit(plain, data)
    ours_traces, ours_loss = _fit(compile_for(_model(), 0.01), data)
    assert plain_traces == 2  # Keras creates the optimizer's and metrics' variables in the first trace
    assert ours_traces == 1
    assert ours_loss == plain_loss  # the same training, bit for bit, one trace fewer
