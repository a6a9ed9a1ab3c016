"""The serving pyfunc on a tiny Keras model: images as clients send them in, label and probabilities out."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

CLASSES = ["cat", "dog", "fox"]
SIZE = 8


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny 0..255 classifier logged with log_image_model, registered as `tiny` v1 @challenger."""
    import keras
    import mlflow

    from tlpipe.tracking.serving import log_image_model

    root = tmp_path_factory.mktemp("serving")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x))
    model.save(root / "model.keras")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("serving", artifact_location=str(root / "art")))
    examples = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    with mlflow.start_run(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = log_image_model(root / "model.keras", CLASSES, SIZE, examples)
    version = mlflow.register_model(info.model_uri, "tiny")
    client = mlflow.MlflowClient(uri, uri)
    client.set_registered_model_alias("tiny", "challenger", version.version)
    return {"model": model, "uri": uri, "warnings": [str(w.message) for w in caught]}


def test_logged_from_code_without_pickle_or_nags(registered):
    """ "Models from code" (no CloudPickle of a Python object) and a typed predict: the register step's output
    carries no MLflow safety warning or type-hint nag."""
    import mlflow
    from mlflow.models import get_model_info

    assert not [w for w in registered["warnings"] if "type hints" in w or "CloudPickle" in w]
    flavor = get_model_info("models:/tiny@challenger").flavors["python_function"]
    assert "python_model.pkl" not in str(flavor) and mlflow.pyfunc.load_model("models:/tiny@challenger")


def png_b64(array: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_input_example_predicts_labels_and_probabilities(registered):
    import mlflow

    model = mlflow.pyfunc.load_model("models:/tiny@challenger")
    out = model.predict(model.input_example)
    assert list(out.columns) == ["label", *CLASSES] and len(out) == 2
    assert set(out["label"]) <= set(CLASSES)
    assert np.allclose(out[CLASSES].sum(axis=1), 1.0, atol=1e-5)
    assert out["label"].tolist() == [CLASSES[k] for k in out[CLASSES].to_numpy().argmax(axis=1)]
    schema, output = model.metadata.get_input_schema(), model.metadata.get_output_schema()
    assert schema is not None and output is not None
    assert schema.input_names() == ["image"]
    assert output.input_names() == ["label", *CLASSES]


def test_bytes_arrays_of_any_size_and_scale_inside(registered):
    """base64 PNG/JPEG, grey/RGBA uint8 arrays of other sizes: resized and scaled inside, as training decodes."""
    import mlflow

    from tlpipe.data.datasets import decode_bytes

    model = mlflow.pyfunc.load_model("models:/tiny@challenger")
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (40, 24, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 9), dtype=np.uint8)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    frame = pd.DataFrame({"image": [png_b64(big), png_b64(big, "JPEG"), big, grey, rgba]})
    out = model.predict(frame)
    assert len(out) == 5 and set(out["label"]) <= set(CLASSES)
    # The PNG and the array of the same pixels give the same answer; both equal the Keras model on the
    # training decoder's output (so no client-side resize or 0..1 scaling is involved).
    assert np.allclose(out.loc[0, CLASSES].astype(float), out.loc[2, CLASSES].astype(float), atol=1e-6)
    raw = base64.b64decode(frame.loc[0, "image"])
    expected = registered["model"].predict(decode_bytes([raw], SIZE).astype("float32"), verbose=0)[0]
    assert np.allclose(out.loc[0, CLASSES].astype(float), expected, atol=1e-5)


def test_bad_input_is_one_clear_error(registered):
    import mlflow

    from tlpipe.errors import DataError

    model = mlflow.pyfunc.load_model("models:/tiny@challenger")
    python_model = model.unwrap_python_model()
    with pytest.raises(DataError, match="image 0: not base64"):
        model.predict(pd.DataFrame({"image": ["not base64 !"]}))
    with pytest.raises(DataError, match="image 0: not a PNG"):
        model.predict(pd.DataFrame({"image": [base64.b64encode(b"hello").decode()]}))
    with pytest.raises(DataError, match="must be uint8"):
        python_model.predict(None, [np.zeros((4, 4, 3), np.float32)])
