import csv
import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.make_subset import choose_class, make_subset
from tests.conftest import make_tree, run_cli, write_params
from tlpipe.contracts import MANIFEST, QUARANTINE, SHARDS_DIR, SubsetSummary
from tlpipe.data.records import records, shard_name
from tlpipe.data.sources import LocalSource, ZipSource, classify, open_source
from tlpipe.errors import DataError
from tlpipe.sections import MakeSubsetConfig

CFG = MakeSubsetConfig(train_per_class=3, val_per_class=1, test_per_class=1, seed=1)


def rows(out: Path):
    with open(out / MANIFEST, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build(source, tmp_path, layout="auto", cfg=CFG):
    out = tmp_path / "subset"
    out.mkdir(parents=True)
    summary, quarantined = make_subset(source, layout, cfg, out)
    assert SubsetSummary.read(out) == summary and summary.quarantined == len(quarantined)
    return out, summary


MLFLOW_INFO = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.")


def one_line_error(stderr: str) -> bool:
    """The failure is one `error:` line, no traceback. The only other lines allowed are MLflow's own INFO logs
    from creating a fresh tracking store (the step opens its MLflow run before reading the source)."""
    lines = stderr.strip().splitlines()
    return (
        bool(lines)
        and lines[-1].startswith("error: ")
        and "Traceback" not in stderr
        and all(MLFLOW_INFO.match(line) for line in lines[:-1])
    )


def cli(params: Path, raw, subset: Path):
    """The step as dvc runs it (`--raw DIR --subset OUT`), from the params file's folder."""
    return run_cli(
        "make_subset", "--params", str(params), "--raw", str(raw), "--subset", str(subset), cwd=params.parent
    )


def test_folders_layout_counts_and_manifest_columns(tmp_path):
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=6)
    out, summary = build(LocalSource(src), tmp_path)
    assert summary.layout == "folders" and summary.classes == ["cat", "dog"]
    got = rows(out)
    assert len(got) == 10
    assert set(got[0]) == {
        "path",
        "class",
        "split",
        "sha256",
        "width",
        "height",
        "channels",
        "bytes",
        "source_path",
        "source_mode",
        "shard",
    }
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        assert len([r for r in got if r["split"] == split and r["class"] == "cat"]) == n
    # The images live in one shard per split here, in manifest order, byte for byte what was accepted.
    assert sorted(p.name for p in (out / SHARDS_DIR).iterdir()) == [shard_name(s, 0) for s in ("test", "train", "val")]
    stored = list(records([out / SHARDS_DIR / r["shard"] for r in got if r["split"] == "train"][:1]))
    assert [name for name, _ in stored] == [r["path"] for r in got if r["split"] == "train"]
    assert all(hashlib.sha256(data).hexdigest() == r["sha256"] for (_, data), r in zip(stored, got, strict=False))


def test_large_splits_roll_over_to_more_shards_and_read_back_in_order(tmp_path, monkeypatch):
    from tlpipe.data import records as records_module
    from tlpipe.data.datasets import decode_images, split_images, stream_batches

    monkeypatch.setattr(records_module, "SHARD_BYTES", 1)  # a new shard after every image
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=6)
    out, _ = build(LocalSource(src), tmp_path)
    images, labels, classes = split_images(out, "train")
    assert len(images.shards) == 6 and len(images) == 6 and classes == ["cat", "dog"]
    assert list(labels) == [0, 0, 0, 1, 1, 1]
    every = decode_images(images, 8)
    picked = decode_images(images[[4, 1]], 8)  # a selection decodes in the order asked
    np.testing.assert_array_equal(picked, every[[4, 1]])
    epochs = [
        np.concatenate([y.numpy() for _, y in stream_batches(images, labels, 8, 4, shuffle_seed=5)]) for _ in range(1)
    ]
    assert sorted(epochs[0]) == sorted(labels)  # every image once per epoch, labels travel with the records
    batches = stream_batches(images, labels, 8, 6, shuffle_seed=5)
    first, second = (next(iter(batches))[1].numpy().tolist() for _ in range(2))
    assert sorted(first) == sorted(second) == sorted(labels.tolist())


def test_kaggle_flat_layout(tmp_path):
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=5, layout="flat", ext=".jpg")
    out, summary = build(LocalSource(src), tmp_path)
    assert summary.layout == "flat"
    assert {r["class"] for r in rows(out)} == {"cat", "dog"}


def test_same_inputs_give_byte_identical_manifest(tmp_path):
    src = make_tree(tmp_path / "raw", per_class=9)
    a, _ = build(LocalSource(src), tmp_path / "a")
    b, _ = build(LocalSource(src), tmp_path / "b")
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    c, _ = build(LocalSource(src), tmp_path / "c", cfg=CFG.model_copy(update={"seed": 2}))
    assert (a / "manifest.csv").read_bytes() != (c / "manifest.csv").read_bytes()


def test_too_few_images_names_class_and_counts(tmp_path):
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=4)
    with pytest.raises(DataError, match=r"class 'cat' .* has 4 usable images .* asks 5 \(3 train \+ 1 val \+ 1 test\)"):
        build(LocalSource(src), tmp_path)


def test_empty_class_folder_is_an_error(tmp_path):
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=5)
    (src / "bird").mkdir()
    with pytest.raises(DataError, match="class 'bird' .* has 0 usable images"):
        build(LocalSource(src), tmp_path)


def test_every_bad_kind_is_quarantined_with_its_reason(tmp_path):
    src = make_tree(tmp_path / "raw", classes=("cat",), per_class=3)
    (src / "cat" / "zero.jpg").write_bytes(b"")
    (src / "cat" / "text.jpg").write_text("not an image")
    good = (src / "cat" / "0.png").read_bytes()
    (src / "cat" / "trunc.png").write_bytes(good[: len(good) // 2])
    (src / "cat" / "dup.png").write_bytes(good)
    source = LocalSource(src)
    files = classify(source, "folders").files["cat"]
    # Asking for more than exists makes the walk visit every candidate.
    chosen, rejected, _ = choose_class(source, "cat", files, {"train": 97, "val": 1, "test": 1}, cfg=CFG, seen={})
    reasons = {q.source_path: q.reason for q in rejected}
    assert "empty file" in reasons["cat/zero.jpg"]
    assert "not an image" in reasons["cat/text.jpg"]
    assert "truncated" in reasons["cat/trunc.png"]
    assert sum(map(len, chosen.values())) == 3
    assert len([r for r in reasons.values() if r.startswith("duplicate of")]) == 1


def test_bad_files_quarantined_listed_and_replaced(tmp_path):
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=6)
    (src / "cat" / "zero.jpg").write_bytes(b"")
    (src / "cat" / "text.jpg").write_text("not an image")
    good = (src / "cat" / "0.png").read_bytes()
    (src / "dog" / "copy_of_cat.png").write_bytes(good)  # the same file in two classes
    out, summary = build(LocalSource(src), tmp_path, cfg=CFG.model_copy(update={"train_per_class": 4}))
    with open(out / QUARANTINE, encoding="utf-8") as fh:
        quarantined = list(csv.DictReader(fh))
    assert summary.quarantined == len(quarantined)
    assert all(q["reason"] for q in quarantined)
    assert len(list((out / "quarantine").rglob("*.*"))) == len(quarantined)
    got = rows(out)
    assert len(got) == 12 and len({r["sha256"] for r in got}) == 12
    assert not {r["source_path"] for r in got} & {"cat/zero.jpg", "cat/text.jpg"}


def test_unicode_class_names_and_odd_modes(tmp_path):
    src = tmp_path / "raw"
    for cls in ("고양이", "café"):
        for i in range(5):
            arr = np.random.default_rng(hash((cls, i)) % 2**32).integers(0, 256, (9, 9, 4), dtype=np.uint8)
            (src / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr, "RGBA").save(src / cls / f"{i}.png")
    out, summary = build(LocalSource(src), tmp_path)
    assert set(summary.classes) == {"고양이", "café"}
    assert {r["source_mode"] for r in rows(out)} == {"PNG/RGBA"}
    shards = sorted((out / SHARDS_DIR).glob("*.tfrecord"))
    stored = dict(records(shards))
    assert set(stored) == {r["path"] for r in rows(out)}
    assert all(Image.open(io.BytesIO(data)).mode == "RGB" for data in stored.values())


def zip_tree(src: Path, target: Path, wrapper: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, wrapper + f.relative_to(src).as_posix())
    return target


def test_zip_of_folders_with_wrapper_dir(tmp_path):
    src = make_tree(tmp_path / "raw", per_class=5)
    archive = zip_tree(src, tmp_path / "raw.zip", wrapper="dataset/train/")
    out, summary = build(open_source(str(archive), endpoint_url=None, max_attempts=1, max_zip_bytes=10**9), tmp_path)
    assert summary.layout == "folders" and summary.classes == ["a", "b"]


def test_zip_of_flat_layout(tmp_path):
    src = make_tree(tmp_path / "raw", per_class=5, layout="flat")
    archive = zip_tree(src, tmp_path / "flat.zip", wrapper="train/")
    out, summary = build(ZipSource(archive, 10**9), tmp_path)
    assert summary.layout == "flat"


@pytest.mark.parametrize("evil", ["../escape.png", "a/../../escape.png", "/etc/passwd.png"])
def test_zip_path_traversal_refused(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/ok.png", b"x")
        zf.writestr(evil, b"x")
    with pytest.raises(DataError, match="would escape the extraction folder"):
        ZipSource(archive, 10**9)
    assert not (tmp_path.parent / "escape.png").exists()


def test_zip_size_cap(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", b"\0" * 100_000)
    with pytest.raises(DataError, match="max_zip_bytes"):
        ZipSource(archive, 1000)


def test_layout_forced_flat_on_folders_finds_nothing(tmp_path):
    src = make_tree(tmp_path / "raw", per_class=2)
    with pytest.raises(DataError, match="no image matched layout 'flat'"):
        classify(LocalSource(src), "flat")


def test_cli_missing_source_one_line_no_traceback_no_output(tmp_path):
    params = write_params(tmp_path / "params.yaml", tmp_path / "does-not-exist")
    result = cli(params, tmp_path / "does-not-exist", tmp_path / "subset")
    assert result.returncode == 2
    assert one_line_error(result.stderr)
    assert "data.source" in result.stderr and "not found" in result.stderr
    assert not (tmp_path / "subset").exists()


def test_cli_failure_leaves_no_partial_output(tmp_path):
    work = tmp_path / "work"  # raw input and output only; params (and the MLflow store beside them) elsewhere
    src = make_tree(work / "raw", per_class=3)
    (tmp_path / "cfg").mkdir()
    params = write_params(tmp_path / "cfg" / "params.yaml", src)
    result = cli(params, src, work / "subset")
    assert result.returncode == 2 and "usable images" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["raw"]  # no subset/, no .subset.partial-* staging


def test_cli_ok_on_tiny_dataset(tmp_path):
    src = make_tree(tmp_path / "raw", per_class=9)
    params = write_params(tmp_path / "params.yaml", src)
    result = cli(params, src, tmp_path / "subset")
    assert result.returncode == 0, result.stderr
    assert "16 images in 2 classes" in result.stdout
    assert SubsetSummary.read(tmp_path / "subset").images == 16


@pytest.mark.servers
def test_s3_prefix_downloads_only_chosen_files(tmp_path, s3_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="raw")
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=12, layout="flat", ext=".jpg")
    for f in src.iterdir():
        s3.upload_file(str(f), "raw", f"kaggle/train/{f.name}")
    s3.put_object(Bucket="raw", Key="other/cat.99.jpg", Body=b"outside the prefix")
    source = open_source("s3://raw/kaggle/train", endpoint_url=s3_server, max_attempts=2, max_zip_bytes=1)
    fetched = []
    original = source.read
    source.read = lambda rel: fetched.append(rel) or original(rel)
    out, summary = build(source, tmp_path)
    assert summary.layout == "flat" and summary.images == 10
    assert len(fetched) == 10  # only the chosen files were downloaded, not all 24
    local, _ = build(LocalSource(src), tmp_path / "local")
    assert (out / "manifest.csv").read_text().replace("\r", "") == (local / "manifest.csv").read_text()


@pytest.mark.servers
def test_s3_cli_with_endpoint_from_params(tmp_path, s3_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="cli")
    src = make_tree(tmp_path / "raw", per_class=9)
    for f in src.rglob("*.png"):
        s3.upload_file(str(f), "cli", f"imgs/{f.relative_to(src).as_posix()}")
    params = write_params(tmp_path / "params.yaml", "s3://cli/imgs", storage={"endpoint_url": s3_server})
    result = cli(params, "s3://cli/imgs", tmp_path / "subset")
    assert result.returncode == 0, result.stderr
    missing = write_params(tmp_path / "p2.yaml", "s3://no-such-bucket/x", storage={"endpoint_url": s3_server})
    result = cli(missing, "s3://no-such-bucket/x", tmp_path / "s2")
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def _splits(out: Path) -> dict[str, str]:
    return {r["source_path"]: r["split"] for r in rows(out)}


@pytest.mark.parametrize("per_class", [12, 40])
def test_adding_and_removing_images_never_moves_an_image_between_splits(tmp_path, per_class):
    """A new data version (20 photos more per class, then some removed) keeps every kept image in its split;
    with few spare images (12 for 5 asked) only the counted borrowed images may move."""
    cfg = MakeSubsetConfig(train_per_class=3, val_per_class=1, test_per_class=1, seed=4)
    src = make_tree(tmp_path / "raw", classes=("cat", "dog"), per_class=per_class)
    before, first = build(LocalSource(src), tmp_path / "v1", cfg=cfg)
    make_tree(tmp_path / "more", classes=("cat", "dog"), per_class=20, seed=1)
    for cls in ("cat", "dog"):
        for i, image in enumerate(sorted((tmp_path / "more" / cls).iterdir())):
            (src / cls / f"new{i}.png").write_bytes(image.read_bytes())  # seed=1: other pixels, no duplicates
    (src / "cat" / "1.png").unlink()
    after, second = build(LocalSource(src), tmp_path / "v2", cfg=cfg)
    old, new = _splits(before), _splits(after)
    moved = {path for path in old.keys() & new.keys() if old[path] != new[path]}
    assert len(moved) <= first.borrowed + second.borrowed
    if per_class == 40:
        assert first.borrowed == second.borrowed == 0 and not moved
    assert all(s.startswith(("train", "val", "test")) for s in new.values())
