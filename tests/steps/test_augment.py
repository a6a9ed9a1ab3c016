"""FusedAugment's fast resampling and the decode path: same results as the reference TF ops, seeded."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tlpipe.data.augmentation import FusedAugment, augmented_copies
from tlpipe.data.datasets import batches, decode_images

SEEDS_AUG = {"rotation_degrees": 10.0, "zoom": 0.1, "width_shift": 0.1, "height_shift": 0.1, "horizontal_flip": True}


def _images(n=6, h=20, w=24, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _reference(images, transforms):
    """The TF kernel the fast path replaces (bilinear, nearest fill), on float32."""
    return keras.ops.convert_to_numpy(
        keras.ops.image.affine_transform(
            images.astype("float32"), transforms, interpolation="bilinear", fill_mode="nearest"
        )
    )


@pytest.mark.parametrize("shape", [(6, 20, 24, 3), (3, 17, 11, 1)])
def test_resampling_matches_the_tf_kernel(shape):
    images = _images(*shape)
    ours = keras.ops.convert_to_numpy(FusedAugment(**SEEDS_AUG, seed=4)(images.astype("float32")))
    transforms = FusedAugment(**SEEDS_AUG, seed=4).transforms(shape[0], shape[1], shape[2])
    np.testing.assert_allclose(ours, _reference(images, transforms), atol=2e-3)


def test_uint8_in_float32_out_is_the_float_path_and_uint8_out_is_rounded():
    images = _images()
    reference = keras.ops.convert_to_numpy(FusedAugment(**SEEDS_AUG, seed=2)(images.astype("float32")))
    as_float = keras.ops.convert_to_numpy(FusedAugment(**SEEDS_AUG, seed=2).augment(images, "float32"))
    np.testing.assert_allclose(as_float, reference, atol=1e-4)
    as_uint8 = keras.ops.convert_to_numpy(FusedAugment(**SEEDS_AUG, seed=2)(images))
    assert as_uint8.dtype == np.uint8
    assert np.abs(as_uint8.astype(float) - reference).max() <= 0.5 + 1e-3


def test_seeded_and_identity_when_not_training():
    images = _images()
    a = augmented_copies(images, FusedAugment(**SEEDS_AUG, seed=9), 2, batch_size=4)
    b = augmented_copies(images, FusedAugment(**SEEDS_AUG, seed=9), 2, batch_size=4)
    assert a.shape == (12, 20, 24, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:6], a[6:])  # each copy draws new transforms
    x = images.astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(FusedAugment(**SEEDS_AUG)(x, training=False)), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(FusedAugment()(x)), x)


def test_batches_are_float32_seeded_and_augmented():
    images, labels = _images(10), np.arange(10, dtype=np.int32)

    def epoch(seed):
        ds = batches(images, labels, 4, augmenter=FusedAugment(**SEEDS_AUG, seed=seed), shuffle_seed=1)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first, again = epoch(3), epoch(3)
    assert [x.shape for x, _ in first] == [(4, 20, 24, 3), (4, 20, 24, 3), (2, 20, 24, 3)]
    assert all(x.dtype == np.float32 for x, _ in first)
    for (xa, ya), (xb, yb) in zip(first, again, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert all(not np.array_equal(x[0], images[y[0]]) for x, y in first)  # labels index the images
    unaugmented = [x for x, _ in batches(images, labels, 4).as_numpy_iterator()]
    np.testing.assert_array_equal(np.concatenate(unaugmented), images.astype(np.float32))  # file order kept


def test_layer_in_a_model_loads_with_safe_mode(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = FusedAugment(**SEEDS_AUG, seed=1, name="augment")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    model.compile("adam", "mse")
    model.fit(np.random.rand(8, 16, 16, 3).astype("float32"), np.zeros((8, 2)), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.get_layer("augment").get_config()["rotation_degrees"] == 10.0
    probe = np.random.rand(2, 16, 16, 3).astype("float32")
    np.testing.assert_allclose(loaded.predict(probe, verbose=0), model.predict(probe, verbose=0), atol=1e-6)


def _antialiased(path, size):
    """The previous decode: full-size decode + bilinear antialiased resize."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)
    return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def _photo(path, width, height, ext=".jpg", mode="RGB"):
    """A smooth image with some texture (JPEG or PNG)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0), (xx + yy) % 256], -1)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").convert(mode)
    if ext == ".jpg":
        image.save(path.with_suffix(ext), quality=92)
    else:
        image.save(path.with_suffix(ext))
    return str(path.with_suffix(ext))


@pytest.mark.parametrize(
    ("width", "height", "size"), [(400, 300, 224), (400, 300, 32), (640, 480, 100), (12, 12, 16), (300, 20, 32)]
)
def test_decode_stays_close_to_the_antialiased_resize(tmp_path, width, height, size):
    """Area resize when shrinking (after a DCT-domain downscale for JPEGs >= 2x the target), bilinear when
    enlarging: within a few grey levels of the old full-size antialiased path."""
    paths = [_photo(tmp_path / "a", width, height), _photo(tmp_path / "b", width, height, ".png")]
    out = decode_images(paths, size)
    assert out.shape == (2, size, size, 3) and out.dtype == np.uint8
    for image, path in zip(out, paths, strict=True):
        diff = np.abs(image.astype(float) - _antialiased(path, size))
        assert diff.mean() < 3.0, (path, diff.mean())


def test_decode_grayscale_png_gives_three_channels(tmp_path):
    path = _photo(tmp_path / "g", 40, 30, ".png", mode="L")
    out = decode_images([path], 32)
    assert out.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_the_augmenter_takes_each_param_by_its_name():
    """build_augmenter passes every augment field by keyword; the layer refuses positional numbers."""
    from tlpipe.data.augmentation import build_augmenter
    from tlpipe.sections import AugmentConfig

    cfg = AugmentConfig(rotation_degrees=7.0, zoom=0.2, width_shift=0.05, height_shift=0.15, horizontal_flip=True)
    layer = build_augmenter(cfg, seed=3)
    assert (layer.rotation_degrees, layer.zoom, layer.width_shift, layer.height_shift, layer.horizontal_flip) == (
        7.0,
        0.2,
        0.05,
        0.15,
        True,
    )
    assert {k: v for k, v in layer.get_config().items() if k in SEEDS_AUG} == {
        "rotation_degrees": 7.0,
        "zoom": 0.2,
        "width_shift": 0.05,
        "height_shift": 0.15,
        "horizontal_flip": True,
    }
    with pytest.raises(TypeError):
        FusedAugment(10.0, 0.1)  # pyright: ignore[reportCallIssue] (the point: positional arguments fail)
