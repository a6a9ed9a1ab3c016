"""Identical inputs give identical bytes: DVC's shared cache and the study fingerprint match across fresh runs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, write_params

STEPS = [
    "make_digits",
    "make_subset",
    "validate_data",
    "augment",
    "pretrain_backbone",
    "extract_features",
    "train_head",
]


def fresh_run(root: Path) -> Path:
    """The data and backbone steps in a new process (new object ids, new clock), as in a fresh clone."""
    root.mkdir(parents=True)
    write_params(root / "params.yaml", "builtin:digits", **TINY)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from pipelines.local import run_steps; run_steps(Path(sys.argv[1]), sys.argv[2:])",
            str(root),
            *STEPS,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": str(REPO),
            "PATH": "/usr/bin:/bin",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "GX_ANALYTICS_ENABLED": "false",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def md5s(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fingerprint(root: Path) -> str:
    from tlpipe.models.backbones import backbone_identity
    from tlpipe.sections import TuneConfig
    from tlpipe.tuning.study import study_fingerprint

    identity = backbone_identity(str(root / "models/backbone"), "none", TINY["model"]["image_size"])
    return study_fingerprint(
        TuneConfig(**TINY["tune"]),
        {"epochs": 2},
        root / "data/subset",
        root / "data/augmented",
        root / "models/head",
        identity,
    )


@pytest.mark.slow
def test_data_and_backbone_built_twice_from_scratch_are_byte_identical(tmp_path):
    a, b = fresh_run(tmp_path / "a"), fresh_run(tmp_path / "b")
    for output in ("data/subset", "data/augmented", "models/backbone", "models/head"):
        files = md5s(a / output)
        assert files and (output == "data/augmented" or any(n.endswith((".tfrecord", ".keras")) for n in files))
        assert files == md5s(b / output), output
    assert fingerprint(a) == fingerprint(b)


def test_a_saved_model_file_depends_only_on_weights_and_architecture(tmp_path):
    import keras
    import numpy as np

    from tlpipe.models.training import save_model

    def build():
        keras.backend.clear_session()  # the layer names of a fresh process
        keras.utils.set_random_seed(1)
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3)(inputs))
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))

    first, second = build(), build()  # other Python objects, same weights
    a, b = save_model(first, tmp_path / "a.keras"), save_model(second, tmp_path / "b.keras")
    assert a.read_bytes() == b.read_bytes()
    loaded = keras.saving.load_model(a)
    sample = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(sample, verbose=0), first.predict(sample, verbose=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]


def test_a_truncated_shard_is_one_line_naming_the_file(tmp_path):
    from tlpipe.data.records import Images, ShardWriter
    from tlpipe.errors import resource_error

    writer = ShardWriter(tmp_path, "train")
    for i in range(4):
        writer.write(f"a/{i}.png", bytes(range(200)))
    writer.close()
    shard = tmp_path / "train-00000.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-50])
    with pytest.raises(Exception) as err:
        list(Images((str(shard),), 4).dataset().as_numpy_iterator())
    line = resource_error(err.value)
    assert line is not None and str(shard) in line and "\n" not in line, line
