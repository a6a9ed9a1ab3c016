"""The input_pipeline benchmark's feature-extraction part and its markdown report."""

from __future__ import annotations

import time

import numpy as np

EXTRACT_TARGET = 0.7


def bench_extract(
    name: str, model, paths: list[str], size: int, batch: int, repeats: int, counts_for_pass: bool = True
) -> dict:
    """extract()-style (decode files + forward) vs forward only on in-memory images; best of `repeats`."""
    from tlpipe.data.datasets import decode_images

    def forward(images: np.ndarray) -> np.ndarray:
        chunks = [
            np.asarray(model(images[s : s + batch].astype("float32"), training=False))
            for s in range(0, len(images), batch)
        ]
        return np.concatenate(chunks)

    decoded = decode_images(paths, size)
    forward(decoded[:batch])  # warm-up: build/trace the model once, for both variants alike
    from_files, in_memory, decode_part = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        images = decode_images(paths, size)
        mid = time.perf_counter()
        features = forward(images)
        from_files.append(time.perf_counter() - start)
        decode_part.append(mid - start)
        start = time.perf_counter()
        forward(decoded)
        in_memory.append(time.perf_counter() - start)
    best_files, best_memory = min(from_files), min(in_memory)
    ratio = best_memory / best_files
    return {
        "backbone": name,
        "image_size": size,
        "images": len(paths),
        "batch_size": batch,
        "repeats": repeats,
        "feature_dim": int(features.shape[1]),
        "from_files_seconds": [round(s, 4) for s in from_files],
        "from_files_decode_part_seconds": [round(s, 4) for s in decode_part],
        "in_memory_seconds": [round(s, 4) for s in in_memory],
        "from_files_images_per_s": round(len(paths) / best_files, 2),
        "in_memory_images_per_s": round(len(paths) / best_memory, 2),
        "ratio": round(ratio, 3),
        "ratio_is": "best in-memory forward time / best from-files (decode_images + forward) time",
        "target": EXTRACT_TARGET,
        "pass": bool(ratio >= EXTRACT_TARGET),
        "counts_for_pass": counts_for_pass,
    }


def mobilenet_extractor(size: int):
    """MobileNetV2 (weights=None), built as extract_features builds it (load_backbone + preprocessing)."""
    from tlpipe.models.backbones import feature_extractor, load_backbone, preprocess_mode
    from tlpipe.sections import ModelConfig

    cfg = ModelConfig(backbone="mobilenet_v2", weights="none", image_size=size)  # validates the size
    return feature_extractor(load_backbone(cfg.backbone, cfg.weights, size), size, preprocess_mode(cfg.backbone))


def vgg_extractor(size: int):
    """The pipeline's default backbone architecture (untrained weights: speed does not depend on them)."""
    from tlpipe.models.backbones import feature_extractor
    from tlpipe.models.vgg import vgg_style  # the architecture pretrain_backbone trains
    from tlpipe.sections import PretrainBackboneConfig

    return feature_extractor(vgg_style(size, list(PretrainBackboneConfig().filters)), size, "none")


def markdown(result: dict) -> str:
    """A short Markdown summary of the JSON result."""
    m, p = result["machine"], result["parameters"]
    pipe = result["input_pipeline"]
    lines = [
        "# Input-pipeline benchmark",
        "",
        f"Machine: {m['usable_cores']} usable cores ({m['cpu_model']}), TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}, tf_keras {m['tf_keras']}, GPUs: {len(m['gpus'])}. "
        f"Run took {result['wall_seconds']:.0f} s. Load average (1 min) at start "
        f"{result['load_average_1_5_15']['start'][0]}, after the input-pipeline part "
        f"{result['load_average_1_5_15'].get('after_input_pipeline', ['n/a'])[0]}, "
        f"at end {result['load_average_1_5_15']['end'][0]}.",
        "",
        f"## Input pipeline: {p['images']} JPEGs of {p['jpeg_width']}x{p['jpeg_height']} -> {p['size']} px, "
        f"batch {p['batch']}, {p['epochs']} epochs",
        "",
        "| loader | setup s | epoch s | first epoch img/s | steady img/s | total img/s | cores busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in ("imagedatagenerator", "tlpipe_fused", "tfdata_keras_layers"):
        r = pipe[key]
        lines.append(
            f"| {key} | {r['setup_seconds']:.2f} | {', '.join(f'{s:.2f}' for s in r['epoch_seconds'])} "
            f"| {r['images_per_s_first_epoch']:.0f} | {r['images_per_s_steady']:.0f} "
            f"| {r['images_per_s_total']:.0f} | {r.get('cores_busy', float('nan')):.2f} |"
        )
    ratio = pipe["ratio"]
    lines += [
        "",
        f"**Ratio tlpipe_fused / imagedatagenerator (total img/s, decode included): {ratio['value']:.2f}x** "
        f"(target >= {ratio['target']}x: {'PASS' if ratio['pass'] else 'FAIL'}). "
        f"First epoch: {pipe['ratio_first_epoch']:.2f}x; steady state: {pipe['ratio_steady']:.2f}x; "
        f"fused vs separate Keras layers (steady): {pipe['fused_vs_keras_layers_steady']:.2f}x.",
        "",
        "## Feature extraction: from files (decode_images + forward) vs forward on in-memory images",
        "",
        "| backbone | px | images | from files img/s | in memory img/s | ratio mem/files | target | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["feature_extraction"].values():
        lines.append(
            f"| {r['backbone']} | {r['image_size']} | {r['images']} | {r['from_files_images_per_s']:.1f} "
            f"| {r['in_memory_images_per_s']:.1f} | {r['ratio']:.3f} | >= {r['target']} "
            f"| {('PASS' if r['pass'] else 'FAIL') if r['counts_for_pass'] else 'info only'} |"
        )
    lines += ["", f"Overall: {'PASS' if result['pass'] else 'FAIL'}.", ""]
    for note in result["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"
