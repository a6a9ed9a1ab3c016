"""A tuning worker's scratch disk on the cluster, from the params at compile time (pipelines/kfp_build.py).

The same estimate as the worker's own cache plan (`tlpipe.tuning.cache.worker_scratch`), from layer shapes
only: the backbone is built without weights. Computable when the backbone is our own (`pretrain`) or a
keras.applications name and the class count is known (the embedded digits); otherwise None, and the
platform default applies (pipelines/platform.py SCRATCH; infra/README.md has the arithmetic for your data).
"""

from __future__ import annotations


def tune_worker_scratch(params) -> str | None:
    """The Kubernetes quantity of the tuning worker's emptyDir for these params, or None when unknowable."""
    from tlpipe.sections import APPLICATION_BACKBONES, BUILTIN, PRETRAIN

    model, subset = params.model, params.make_subset
    if params.data.source != BUILTIN or model.backbone not in (PRETRAIN, *APPLICATION_BACKBONES):
        return None  # the class count or the architecture is only known when the data or model is read
    import keras

    from tlpipe.tuning.cache import worker_scratch

    if model.backbone == PRETRAIN:
        from tlpipe.models.vgg import vgg_style

        backbone = vgg_style(model.image_size, list(params.pretrain_backbone.filters))
    else:
        from tlpipe.models.backbones import load_backbone

        backbone = load_backbone(model.backbone, "none", model.image_size)
    classes = len(params.make_digits.target_classes)
    try:
        return worker_scratch(
            backbone,
            model.image_size,
            subset.train_per_class * classes,
            subset.val_per_class * classes,
            params.augment.copies,
            params.tune.cache_dtype,
            params.tune.cache_max_bytes,
            min_ratio=params.tune.freeze_ratio[0],
        )
    finally:
        keras.backend.clear_session()
