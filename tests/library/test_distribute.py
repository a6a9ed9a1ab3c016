"""Fine-tuning under tf.distribute.MirroredStrategy gives the single-device result.

On a node with several GPUs, fine_tune trains under a MirroredStrategy (tlpipe/models/fitting.py `strategy`).
No GPU here: two logical CPU devices stand in for them. They must be configured before TensorFlow
initialises, so the comparison runs in a fresh interpreter. The same classifier (`build_model`: backbone
half frozen, BatchNorm in inference mode, head) starts from the same weights and trains on the same batches
once on one device and once mirrored over two; the global batch is split between the replicas and their
gradients are summed, so losses and weights agree up to float reduction order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras

from tlpipe.contracts import HyperParams
from tlpipe.models.fitting import build_model, strategy

SIZE, CLASSES = 16, 3
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (96, SIZE, SIZE, 3)).astype("float32")
y = (x[:, :8, :8].mean(axis=(1, 2, 3)) // 86).astype("int32")  # learnable from the pixels
hp = HyperParams(freeze_ratio=0.5, learning_rate=0.01, dropout=0.0, head_units=8)


def backbone():
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    for width in (4, 8):
        h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.MaxPooling2D()(h)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))


def train(strategy_):
    keras.utils.set_random_seed(1)
    with strategy_.scope():
        model, _ = build_model(backbone(), "none", SIZE, hp, CLASSES, None)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(data, epochs=3, verbose=0).history["loss"]
    return model, history


single, single_loss = train(tf.distribute.get_strategy())
devices = [d.name for d in tf.config.list_logical_devices("CPU")]
mirrored_strategy = strategy(devices)  # what fitting.train uses when given devices
mirrored, mirrored_loss = train(mirrored_strategy)
weights = [float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True)]
probe = x[:16]
print(json.dumps({
    "devices": devices, "replicas": mirrored_strategy.num_replicas_in_sync,
    "default_is_mirrored": isinstance(strategy(), tf.distribute.MirroredStrategy),
    "single_loss": single_loss, "mirrored_loss": mirrored_loss, "max_weight_diff": max(weights),
    "max_prob_diff": float(np.max(np.abs(np.asarray(single(probe)) - np.asarray(mirrored(probe))))),
}))
"""


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_logical_cpus_make_two_replicas(result):
    assert len(result["devices"]) == 2 and result["replicas"] == 2


def test_mirrored_training_matches_one_device(result):
    assert result["single_loss"][-1] < result["single_loss"][0]  # it trained
    assert result["mirrored_loss"] == pytest.approx(result["single_loss"], rel=1e-3, abs=1e-4)
    assert result["max_weight_diff"] < 1e-3
    assert result["max_prob_diff"] < 1e-3


def test_fine_tune_picks_the_default_strategy_without_gpus(result):
    """`strategy()` mirrors over GPUs only: with logical CPUs alone it keeps the default (one device)."""
    assert result["default_is_mirrored"] is False
