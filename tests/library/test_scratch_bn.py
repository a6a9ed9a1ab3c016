"""An application backbone trained from scratch on a small set must learn, not sit at chance in inference."""

import keras
import numpy as np
import pytest

from tlpipe.contracts import HyperParams
from tlpipe.models.backbones import SCRATCH_BN_MOMENTUM, load_backbone, preprocess_mode
from tlpipe.models.fitting import build_model

SIZE = 32
pytestmark = pytest.mark.slow  # about a minute on two busy cores (MobileNetV2 build + 4 epochs)


def toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes a network separates in a few steps: dark and bright noisy images."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0, 120, (n, SIZE, SIZE, 3)) + 120 * y[:, None, None, None]
    return x.astype("float32"), y


def test_mobilenet_v2_from_scratch_learns_in_inference_mode():
    backbone = load_backbone("mobilenet_v2", "none", SIZE)
    assert (
        max(layer.momentum for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
        > SCRATCH_BN_MOMENTUM
    )  # keras' 0.999
    hp = HyperParams(freeze_ratio=0.0, learning_rate=1e-3, dropout=0.0, head_units=16, regime="scratch", train_bn=True)
    keras.utils.set_random_seed(0)
    model, _ = build_model(backbone, preprocess_mode("mobilenet_v2"), SIZE, hp, 2, None)
    norms = [
        layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and all(layer.momentum <= SCRATCH_BN_MOMENTUM for layer in norms)
    x, y = toy(96, 0)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0)  # 24 steps: the moving statistics must catch up
    x_val, y_val = toy(64, 1)
    accuracy = float(np.mean(model.predict(x_val, verbose=0).argmax(axis=1) == y_val))
    assert accuracy >= 0.9, f"validation accuracy {accuracy:.2f} in inference mode (chance is 0.5)"
