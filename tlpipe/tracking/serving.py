"""The registered model as a client calls it: images in, class label and per-class probabilities out.

`register` logs `ImageClassifier` (an MLflow pyfunc) around the fine-tuned Keras model. It takes what a
client sends: a DataFrame whose `image` column holds base64-encoded image files (PNG, JPEG, ...; what
`mlflow models serve` receives as JSON), raw image bytes, or uint8 arrays of any size, and returns a
DataFrame with `label` and one probability column per class. Decoding, resizing and the 0..255 scale
happen inside, exactly as for the training splits (tlpipe.data.datasets), so a client re-implements nothing:

    model = mlflow.pyfunc.load_model("models:/digits@champion")
    model.predict(pd.DataFrame({"image": [base64.b64encode(open("7.png", "rb").read()).decode()]}))

The class names and input size travel in the model's `model_config`; the Keras file is its artifact.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

IMAGE_COLUMN, LABEL_COLUMN = "image", "label"
KERAS_ARTIFACT = "keras_model"
REQUIREMENTS = ["tensorflow-cpu==2.21.0", "keras==3.15.1", "pandas", "pillow"]
TLPIPE_PACKAGE = Path(__file__).resolve().parents[1]  # shipped as code: the decoder and the custom layers
MODEL_CODE = Path(__file__).with_name("serving_model.py")  # "models from code": MLflow pickles nothing


class ImageClassifier(PythonModel):
    """Images -> (label, probability per class), with the fine-tuned Keras model inside."""

    def load_context(self, context) -> None:
        """Load the Keras model and read the class names and input size from the model config."""
        import keras

        import tlpipe.data.augmentation  # noqa: F401 - registers the custom augmentation layer

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], safe_mode=True)
        self.classes = list(context.model_config["classes"])
        self.size = int(context.model_config["image_size"])

    def images(self, model_input) -> np.ndarray:
        """uint8 (N, size, size, 3) from a DataFrame `image` column, a list of items, or an (N, h, w[, c]) array.

        Each item is a base64 string, raw image bytes, or a uint8 array of any size.
        """
        from tlpipe.data.datasets import decode_bytes, resize_array
        from tlpipe.errors import DataError

        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise DataError(
                    f"the input has columns {list(model_input.columns)}; send a column "
                    f"{IMAGE_COLUMN!r} of base64-encoded image files"
                )
            items = list(model_input[IMAGE_COLUMN])
        else:
            items = list(model_input)
        out = np.empty((len(items), self.size, self.size, 3), np.uint8)
        for i, item in enumerate(items):
            if isinstance(item, str):
                try:
                    item = base64.b64decode(item, validate=True)
                except binascii.Error:
                    raise DataError(f"image {i}: not base64 text (send base64.b64encode(file bytes))") from None
            out[i] = (
                decode_bytes([bytes(item)], self.size)
                if isinstance(item, (bytes, bytearray))
                else resize_array(np.asarray(item), self.size)[None]
            )[0]
        return out

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """`label` (the most probable class) and one probability column per class, one row per image.

        The hint is what `mlflow models serve` passes (a DataFrame; MLflow infers nothing from it, the signature
        is explicit); lists and arrays of images work too.
        """
        probs = np.asarray(self.model.predict(self.images(model_input).astype("float32"), verbose=0))
        frame = pd.DataFrame(probs.astype("float64"), columns=self.classes)
        frame.insert(0, LABEL_COLUMN, [self.classes[k] for k in probs.argmax(axis=1)])
        return frame


def encode_png(image: np.ndarray) -> str:
    """A uint8 image as base64 PNG text (what a client puts in the `image` column)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def signature(classes: list[str]):
    """Input: a string column `image`; output: `label` and one double column per class."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs: list[ColSpec | TensorSpec] = [ColSpec("string", IMAGE_COLUMN)]
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec("string", LABEL_COLUMN),
        *(ColSpec("double", str(c)) for c in classes),
    ]
    return ModelSignature(Schema(inputs), Schema(outputs))


def log_image_model(keras_file: Path, classes: list[str], image_size: int, examples: np.ndarray):
    """Log `ImageClassifier` around `keras_file` to the active run; returns MLflow's ModelInfo.

    Args:
        keras_file: the fine-tuned model (model.keras).
        classes: class names in the model's output order.
        image_size: the model's input side in pixels.
        examples: a few uint8 test images, stored base64-encoded as the input example.
    """
    example = pd.DataFrame({IMAGE_COLUMN: [encode_png(image) for image in examples]})
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={KERAS_ARTIFACT: str(keras_file)},
        model_config={"classes": [str(c) for c in classes], "image_size": int(image_size)},
        code_paths=[str(TLPIPE_PACKAGE)],
        signature=signature(classes),
        input_example=example,
        pip_requirements=REQUIREMENTS,
    )


def keras_model(model_uri: str):
    """The Keras model inside a registered version: the pyfunc's, or a Keras-flavour version's own."""
    from mlflow.models import get_model_info

    if "keras" in get_model_info(model_uri).flavors:  # versions registered before the serving pyfunc
        from mlflow.keras import load_model

        return load_model(model_uri)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
