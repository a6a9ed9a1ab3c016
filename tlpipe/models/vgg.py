"""Our own small backbone: what `pretrain_backbone` trains on the source classes (the offline transfer source)."""

from __future__ import annotations

import keras


def vgg_style(size: int, filters: list[int]) -> keras.Model:
    """Conv-BN-ReLU x2 + max-pool blocks, then global average pooling: a pooled feature extractor."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for block, width in enumerate(filters, start=1):
        for conv in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{conv}")(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name="backbone")
