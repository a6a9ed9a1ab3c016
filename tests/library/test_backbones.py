import keras
import numpy as np
import pytest

from tlpipe.contracts import BACKBONE_FILE
from tlpipe.errors import PipelineError
from tlpipe.models.backbones import (
    PREPROCESS_MODE,
    apply_freeze,
    backbone_file,
    backbone_identity,
    build_classifier,
    build_head,
    cut_points,
    freeze_plan,
    load_backbone,
    preprocess_mode,
    preprocessing,
    split_at,
)
from tlpipe.sections import ModelConfig

SIZES = {"vgg16": 32, "inception_v3": 75, "mobilenet_v2": 32, "resnet50": 32, "efficientnet_b0": 32}


@pytest.fixture(scope="module", params=sorted(SIZES))
def app(request):
    cfg = ModelConfig(backbone=request.param, weights="none", image_size=SIZES[request.param])
    return cfg, load_backbone(cfg.backbone, cfg.weights, cfg.image_size)


def test_freeze_ratio_snaps_to_single_tensor_boundaries(app):
    cfg, backbone = app
    points = cut_points(backbone)
    assert points[0] == 0 and points[-1] == len(backbone.layers) - 1
    for ratio in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        plan = freeze_plan(backbone, ratio)
        assert plan.frozen in points
        apply_freeze(backbone, plan)
        for i, layer in enumerate(backbone.layers[1:], start=1):
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            assert layer.trainable == (i > plan.frozen and not is_bn), layer.name
    # nearby ratios that freeze the same layers are one point
    assert len({freeze_plan(backbone, r / 2000).frozen for r in range(2001)}) == len(points)


def test_prefix_and_suffix_compose_to_the_backbone(app):
    cfg, backbone = app
    plan = freeze_plan(backbone, 0.5)
    prefix, suffix = split_at(backbone, plan.frozen)
    x = np.random.default_rng(0).uniform(0, 255, (2, cfg.image_size, cfg.image_size, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(suffix(prefix(x))), np.asarray(backbone(x)), rtol=1e-5, atol=1e-5)


def test_unfrozen_batchnorm_stays_in_inference_mode():
    backbone = load_backbone("resnet50", "none", 32)
    plan = freeze_plan(backbone, 0.5)
    apply_freeze(backbone, plan)
    unfrozen_bn = [
        layer for layer in backbone.layers[plan.frozen + 1 :] if isinstance(layer, keras.layers.BatchNormalization)
    ]
    conv = [layer for layer in backbone.layers[plan.frozen + 1 :] if isinstance(layer, keras.layers.Conv2D)][0]
    stats = [(np.array(b.moving_mean), np.array(b.moving_variance)) for b in unfrozen_bn]
    kernel = np.array(conv.kernel)
    model = build_classifier(backbone, build_head(backbone.output.shape[-1], 3, 8, 0.0), 32, "tf")
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    # inference mode: the training flag changes nothing (no dropout here)
    np.testing.assert_allclose(np.asarray(model(x, training=True)), np.asarray(model(x, training=False)), atol=1e-6)
    model.compile(keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1, 2, 0, 1, 2, 0, 1]), epochs=1, verbose=0)
    for layer, (mean, var) in zip(unfrozen_bn, stats, strict=True):
        np.testing.assert_array_equal(np.array(layer.moving_mean), mean)
        np.testing.assert_array_equal(np.array(layer.moving_variance), var)
    assert not np.allclose(np.array(conv.kernel), kernel)  # the unfrozen part does train


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "mobilenet_v2", "inception_v3"])
def test_preprocessing_layer_matches_keras_preprocess_input(name):
    family = {
        "vgg16": keras.applications.vgg16,
        "resnet50": keras.applications.resnet50,
        "mobilenet_v2": keras.applications.mobilenet_v2,
        "inception_v3": keras.applications.inception_v3,
    }
    x = np.random.default_rng(2).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    layer = preprocessing(PREPROCESS_MODE[name])
    assert layer is not None
    ours = np.asarray(layer(x))
    np.testing.assert_allclose(ours, family[name].preprocess_input(x.copy()), rtol=1e-5, atol=1e-4)


def test_saved_classifier_loads_in_safe_mode(tmp_path):
    backbone = load_backbone("vgg16", "none", 32)
    model = build_classifier(backbone, build_head(512, 2, 4, 0.1), 32, preprocess_mode("vgg16"))
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    x = np.random.default_rng(3).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5)


def test_imagenet_offline_fails_with_one_clear_line(monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def no_network(*args, **kwargs):
        raise OSError("URL fetch failure: network unreachable")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(PipelineError) as info:
        load_backbone("mobilenet_v2", "imagenet", 32)
    message = str(info.value)
    assert "model.weights=imagenet" in message and "set model.weights to that file" in message
    assert "\n" not in message


def test_weights_from_file_and_mismatch(tmp_path):
    source = load_backbone("mobilenet_v2", "none", 32)
    source.save_weights(tmp_path / "mnv2.weights.h5")
    loaded = load_backbone("mobilenet_v2", str(tmp_path / "mnv2.weights.h5"), 32)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(PipelineError, match="does not fit resnet50"):
        load_backbone("resnet50", str(tmp_path / "mnv2.weights.h5"), 32)
    with pytest.raises(PipelineError, match="file not found"):
        load_backbone("mobilenet_v2", str(tmp_path / "missing.weights.h5"), 32)


def test_keras_backbone_file_errors(tmp_path):
    with pytest.raises(PipelineError, match="file not found"):
        load_backbone(str(tmp_path / "nope.keras"), "none", 16)
    (tmp_path / "junk.keras").write_text("junk")
    with pytest.raises(PipelineError, match="not a loadable .keras model"):
        load_backbone(str(tmp_path / "junk.keras"), "none", 16)
    (tmp_path / "empty_folder").mkdir()  # a pretrain_backbone folder without its backbone.keras
    with pytest.raises(PipelineError, match="file not found"):
        load_backbone(str(tmp_path / "empty_folder"), "none", 16)


def test_backbone_folder_file_and_identity(tmp_path):
    """pretrain_backbone's folder stands for its backbone.keras; identity is by content, not by path."""
    from tlpipe.models.vgg import vgg_style

    folder = tmp_path / "backbone"
    folder.mkdir()
    own = vgg_style(16, [4])
    own.save(folder / BACKBONE_FILE)
    assert backbone_file(str(folder)) == str(folder / BACKBONE_FILE)
    assert backbone_file("vgg16") == "vgg16" and backbone_file("s3://b/k.keras") == "s3://b/k.keras"
    loaded = load_backbone(str(folder), "none", 16)
    assert loaded.name == "backbone" and preprocess_mode(str(folder)) == "none"
    np.testing.assert_array_equal(own.get_weights()[0], loaded.get_weights()[0])
    identity = backbone_identity(str(folder), "none", 16)
    assert identity.startswith("sha256:")
    assert identity == backbone_identity(str(folder / BACKBONE_FILE), "none", 16)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / BACKBONE_FILE).write_bytes((folder / BACKBONE_FILE).read_bytes())
    assert backbone_identity(str(copy), "none", 16) == identity  # same bytes elsewhere: same backbone
    other = vgg_style(16, [4])
    other.save(copy / BACKBONE_FILE)
    assert backbone_identity(str(copy), "none", 16) != identity  # other weights: another backbone
    assert backbone_identity("vgg16", "none", 32) != backbone_identity("vgg16", "imagenet", 32)
    assert backbone_identity("vgg16", "none", 32) != backbone_identity("vgg16", "none", 64)


@pytest.mark.servers
def test_weights_and_backbone_from_s3(tmp_path, s3_server, monkeypatch):
    import boto3

    from tlpipe.models.vgg import vgg_style

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="weights")
    source = load_backbone("mobilenet_v2", "none", 32)
    source.save_weights(tmp_path / "w.weights.h5")
    s3.upload_file(str(tmp_path / "w.weights.h5"), "weights", "mnv2/w.weights.h5")
    own = vgg_style(16, [4])
    own.save(tmp_path / "own.keras")
    s3.upload_file(str(tmp_path / "own.keras"), "weights", "own/backbone.keras")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "cache"))
    loaded = load_backbone("mobilenet_v2", "s3://weights/mnv2/w.weights.h5", 32, s3_server)
    np.testing.assert_array_equal(source.get_weights()[0], loaded.get_weights()[0])
    mine = load_backbone("s3://weights/own/backbone.keras", "none", 16, s3_server)
    np.testing.assert_array_equal(own.get_weights()[0], mine.get_weights()[0])
