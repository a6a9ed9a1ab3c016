"""Backbones: keras.applications or a saved .keras model, their preprocessing, weights, and freeze boundaries.

Models are built from built-in Keras layers only (preprocessing included), so a saved model loads with
`safe_mode=True` anywhere, MLflow's loader included, without our code on the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tlpipe.contracts import BACKBONE_FILE
from tlpipe.data.storage import fetch
from tlpipe.errors import PipelineError
from tlpipe.sections import APPLICATION_BACKBONES

_CONSTRUCTORS = {
    "vgg16": "VGG16",
    "inception_v3": "InceptionV3",
    "mobilenet_v2": "MobileNetV2",
    "resnet50": "ResNet50",
    "efficientnet_b0": "EfficientNetB0",
}
# keras.applications.<family>.preprocess_input, expressed with built-in layers. efficientnet rescales inside.
PREPROCESS_MODE = {
    "vgg16": "caffe",
    "resnet50": "caffe",
    "inception_v3": "tf",
    "mobilenet_v2": "tf",
    "efficientnet_b0": "none",
}
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# Layers that belong to the conv/dense before them: never cut between a layer and these.
_ATTACHED = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU)


def trains_from_scratch(backbone: str, weights: str) -> bool:
    """Whether a backbone has nothing to transfer: a keras.applications name without weights.

    Freezing its random layers (BatchNormalization in inference mode) learns nothing, so tune searches only the
    scratch regime and fine_tune without tuning trains it from scratch.
    """
    return backbone in APPLICATION_BACKBONES and weights == "none"


def preprocess_mode(spec: str) -> str:
    """The input preprocessing a backbone expects (a .keras backbone carries its own)."""
    return PREPROCESS_MODE.get(spec, "none")


def backbone_file(spec: str) -> str:
    """A backbone input as a file or URI: pretrain_backbone's folder holds backbone.keras; others are as given."""
    if spec not in APPLICATION_BACKBONES and Path(spec).is_dir():
        return str(Path(spec) / BACKBONE_FILE)
    return spec


def backbone_identity(spec: str, weights: str, image_size: int) -> str:
    """What the backbone is, by content: the file's sha256, or the application, weights and input size."""
    from tlpipe.fingerprint import content_hash

    source = backbone_file(spec)
    if source not in APPLICATION_BACKBONES and Path(source).is_file():
        return "sha256:" + content_hash(source)
    if weights not in ("none", "imagenet") and Path(weights).is_file():
        weights = "sha256:" + content_hash(weights)
    return f"{source}:{weights}:{image_size}"


def describe_backbone(spec: str, identity: str) -> str:
    """The backbone by what it is: `vgg_style[8, 16] pretrained on data/raw/x (537 images of ...), sha256 ...`."""
    from tlpipe.contracts import BackboneInfo

    if spec not in APPLICATION_BACKBONES and (Path(spec) / BackboneInfo.FILE).is_file():
        info = BackboneInfo.read(spec)
        on = info.source or "source classes"
        return (
            f"{info.architecture} pretrained on {on} ({info.source_images} images of classes "
            f"{', '.join(info.source_classes)}; val accuracy {info.val_accuracy:.3f}), sha256 {info.sha256[:12]}"
        )
    if identity.startswith("sha256:"):
        return f"a .keras backbone ({spec}), sha256 {identity.removeprefix('sha256:')[:12]}"
    name, weights, size = identity.rsplit(":", 2)
    return f"{name}, {weights} weights, {size} px input"


def preprocessing(mode: str) -> keras.layers.Layer | None:
    """A frozen built-in layer equal to keras.applications' preprocess_input for `mode`, on 0..255 RGB."""
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")
    if mode == "caffe":
        # RGB -> BGR and mean subtraction as a fixed 1x1 linear map: exact, and no Lambda layer.
        layer = keras.layers.Dense(3, name="preprocess", trainable=False)
        layer.build((None, 3))
        layer.set_weights([np.eye(3, dtype=np.float32)[::-1].copy(), -_CAFFE_MEAN_BGR])
        return layer
    if mode == "none":
        return None
    raise PipelineError(f"unknown preprocessing mode {mode!r}")


def _imagenet_error(name: str, exc: Exception) -> PipelineError:
    ctor = _CONSTRUCTORS[name]
    return PipelineError(
        f"model.weights=imagenet: could not download the ImageNet weights for {name} ({type(exc).__name__}); "
        f"without network, save them where there is one (keras.applications.{ctor}(weights='imagenet', "
        f"include_top=False).save_weights('{name}.weights.h5')) and set model.weights to that file or an s3:// URI"
    )


def _weights_from_mlflow(uri: str) -> list[np.ndarray]:
    from mlflow.keras import load_model

    try:
        model = load_model(uri)
    except Exception as exc:  # MLflow raises its own and HTTP errors alike: all mean "cannot load"
        raise PipelineError(f"model.weights={uri}: cannot load that MLflow model ({exc})") from None
    try:
        return model.get_layer("backbone").get_weights()
    except ValueError:
        raise PipelineError(f"model.weights={uri}: that model has no layer named 'backbone'") from None


def load_backbone(spec: str, weights: str, size: int, endpoint_url: str | None = None) -> keras.Model:
    """The feature extractor named by the backbone input and `model.weights`, pooled, named 'backbone'.

    `spec` is pretrain_backbone's folder, a .keras path or s3:// URI, or a keras.applications name.
    """
    if spec not in APPLICATION_BACKBONES:
        source = backbone_file(spec)
        path = fetch(source, endpoint_url)
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # a corrupt or foreign file raises many kinds; the user needs the file name
            raise PipelineError(f"backbone {source}: not a loadable .keras model ({exc})") from None
        if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
            raise PipelineError(f"backbone {source}: must output one pooled feature vector per image")
        return keras.Model(model.input, model.output, name="backbone")
    constructor = getattr(keras.applications, _CONSTRUCTORS[spec])
    kwargs = dict(include_top=False, input_shape=(size, size, 3), pooling="avg")
    if weights == "imagenet":
        try:
            model = constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # urllib/HTTP/SSL errors all mean the download failed
            raise _imagenet_error(spec, exc) from None
    else:
        model = constructor(weights=None, **kwargs)
        if weights.startswith("models:/"):
            model.set_weights(_weights_from_mlflow(weights))
        elif weights != "none":
            path = fetch(weights, endpoint_url)
            try:
                model.load_weights(path)
            except Exception as exc:  # h5py/ValueError on a mismatched or corrupt file
                raise PipelineError(f"model.weights={weights}: does not fit {spec} ({exc})") from None
    return keras.Model(model.input, model.output, name="backbone")


def _producers(model: keras.Model) -> list[set[int]]:
    """For each layer, the indices of the layers whose outputs it consumes."""
    made_by = {}
    for i, layer in enumerate(model.layers):
        for tensor in keras.tree.flatten(layer.output):
            made_by[id(tensor)] = i
    sources = []
    for layer in model.layers:
        node = layer._inbound_nodes[0]
        sources.append({made_by[id(t)] for t in node.input_tensors if id(t) in made_by})
    return sources


def cut_points(backbone: keras.Model) -> list[int]:
    """Valid freeze boundaries k (layers 1..k frozen): places where exactly one tensor crosses the cut.

    In a residual or inception network that is between blocks; a conv is never separated from its
    BatchNormalization/activation. 0 (nothing frozen) and the last layer (all frozen) are always valid.
    """
    sources = _producers(backbone)
    layers = backbone.layers
    last = len(layers) - 1
    valid = []
    for k in range(last + 1):
        crossing = {s for j in range(k + 1, last + 1) for s in sources[j] if s <= k}
        if k < last and (crossing != {k} or isinstance(layers[k + 1], _ATTACHED)):
            continue
        valid.append(k)
    return valid


@dataclass(frozen=True)
class FreezePlan:
    """How a freeze ratio lands on a backbone."""

    ratio: float
    frozen: int
    total: int
    boundary: str

    @property
    def effective_ratio(self) -> float:
        """The ratio the boundary actually freezes."""
        return self.frozen / self.total if self.total else 1.0


def freeze_plan(backbone: keras.Model, ratio: float) -> FreezePlan:
    """Snap `ratio` (share of layers from the input side kept frozen) to the nearest valid boundary."""
    total = len(backbone.layers) - 1
    points = cut_points(backbone)
    frozen = min(points, key=lambda k: (abs(k - ratio * total), k))
    return FreezePlan(ratio, frozen, total, backbone.layers[frozen].name)


def apply_freeze(backbone: keras.Model, plan: FreezePlan, train_bn: bool = False) -> None:
    """Freeze layers 1..plan.frozen; the rest train. BatchNormalization stays in inference mode unless `train_bn`.

    Keras 3 replaces the `training=False` recorded on a nested model call with fit()'s training=True, so
    the keras.io rule is enforced the way Keras 3 honours it: a BatchNormalization layer with
    trainable=False always runs in inference mode (its moving statistics, scale and offset stay fixed).
    `train_bn` lets the unfrozen BatchNormalization layers adapt (a backbone trained from scratch must).
    """
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index > plan.frozen and (train_bn or not is_bn)


# keras.applications build BatchNormalization with momentum 0.999 (tuned for ImageNet's ~5,000 steps per
# epoch). On a few hundred images the moving statistics move 0.1% per step, and while a fresh network's
# weights change fast they also lag behind them: inference normalises with stale statistics and validation
# sits at chance while training learns. Measured on MobileNetV2 at 32 px from scratch (tests/library/test_scratch_bn.py,
# 24 steps): inference accuracy 0.50 at momentum 0.999, 0.9 and 0.8; 0.97 at 0.5 (train-mode accuracy 0.97).
SCRATCH_BN_MOMENTUM = 0.5


def fresh_copy(backbone: keras.Model) -> keras.Model:
    """The same architecture with newly initialised weights: the from-scratch regime.

    BatchNormalization momentum is capped at SCRATCH_BN_MOMENTUM so the moving statistics that inference
    uses catch up with the data within an epoch or two of a small dataset.
    """
    copy = keras.models.clone_model(backbone)  # clone_model builds new layers from their initialisers
    for layer in copy.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, SCRATCH_BN_MOMENTUM)
    return keras.Model(copy.input, copy.output, name="backbone")


def scratch_plan(backbone: keras.Model) -> FreezePlan:
    """Nothing frozen: the plan of a backbone trained from new weights."""
    return FreezePlan(0.0, 0, len(backbone.layers) - 1, backbone.layers[0].name)


def regime_plan(backbone: keras.Model, regime: str, ratio: float) -> tuple[keras.Model, FreezePlan, bool]:
    """(backbone to train, freeze plan, train BatchNormalization?) for a regime.

    scratch: a fresh copy, nothing frozen, BatchNormalization trains. Otherwise the pretrained backbone
    frozen up to the boundary nearest `ratio` (1.0 = frozen features, 0.0 = full fine-tuning).
    """
    if regime == "scratch":
        fresh = fresh_copy(backbone)
        return fresh, scratch_plan(fresh), True
    return backbone, freeze_plan(backbone, ratio), False


def split_at(backbone: keras.Model, frozen: int) -> tuple[keras.Model, keras.Model]:
    """(prefix, suffix) models around boundary `frozen`; suffix(prefix(x)) == backbone(x), layers shared."""
    cut = backbone.layers[frozen].output
    prefix = keras.Model(backbone.input, cut, name="backbone_prefix")
    suffix = keras.Model(cut, backbone.output, name="backbone_suffix")
    return prefix, suffix


def build_head(features: int, classes: int, units: int, dropout: float) -> keras.Model:
    """The classifier head (dense + dropout, as in the seeds) on a pooled feature vector."""
    inputs = keras.Input((features,), name="features")
    x = keras.layers.Dense(units, activation="relu", name="head_dense")(inputs)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head_output", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="head")


def build_classifier(backbone: keras.Model, head: keras.Model, size: int, mode: str) -> keras.Model:
    """Image (0..255 RGB) -> preprocessing -> backbone (BatchNorm in inference mode) -> head."""
    inputs = keras.Input((size, size, 3), name="image")
    layer = preprocessing(mode)
    x = layer(inputs) if layer is not None else inputs
    x = backbone(x, training=False)
    return keras.Model(inputs, head(x), name="classifier")


def feature_extractor(backbone: keras.Model, size: int, mode: str) -> keras.Model:
    """Image -> pooled features with the frozen backbone."""
    inputs = keras.Input((size, size, 3), name="image")
    layer = preprocessing(mode)
    x = layer(inputs) if layer is not None else inputs
    return keras.Model(inputs, backbone(x, training=False), name="feature_extractor")
