"""One staged-write helper (tlpipe/fs.py) and one fingerprint module (tlpipe/fingerprint.py) for every caller."""

import ast
import re

import numpy as np
import pytest

from tests.conftest import REPO
from tlpipe.data import identity
from tlpipe.data.arrays import NpyWriter
from tlpipe.data.identity import split_ids
from tlpipe.fingerprint import content_hash, digest
from tlpipe.fs import atomic_dir, atomic_file

LIBRARY = [p for d in ("tlpipe", "components", "pipelines", "operators") for p in (REPO / d).rglob("*.py")]


def _calls(path, names):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and (getattr(n.func, "attr", None) in names or getattr(n.func, "id", None) in names)
    ]


def test_only_the_fs_module_renames_into_place_and_only_the_fingerprint_module_hashes():
    renames = {
        p.relative_to(REPO).as_posix()
        for p in LIBRARY
        if re.search(r"os\.replace\(|\.partial[\"'.-]|\.rename\(", p.read_text(encoding="utf-8"))
    }
    assert renames <= {"tlpipe/fs.py"}, renames
    hashing = {p.relative_to(REPO).as_posix() for p in LIBRARY if "hashlib.sha256" in p.read_text()}
    assert hashing <= {"tlpipe/fingerprint.py", "tlpipe/data/images.py"}, hashing  # images: a manifest column
    assert "psycopg2://" not in (REPO / "tlpipe/tuning/study.py").read_text()


def test_a_failed_staged_write_leaves_the_old_output_and_no_partial(tmp_path):
    target = tmp_path / "out" / "model.keras"
    with atomic_file(target) as staged:
        assert staged.suffix == ".keras" and staged.parent == target.parent
        staged.write_text("one")
    with pytest.raises(RuntimeError), atomic_file(target) as staged:
        staged.write_text("two")
        raise RuntimeError("killed")
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["model.keras"]
    with atomic_dir(tmp_path / "folder") as staged:
        (staged / "a.txt").write_text("a")
    assert (tmp_path / "folder" / "a.txt").read_text() == "a"


def test_npy_writer_stages_through_the_same_helper(tmp_path):
    path = tmp_path / "rows.npy"
    NpyWriter.write(path, [np.ones((2, 3), "uint8"), np.zeros((1, 3), "uint8")], (3, 3), "uint8")
    assert np.load(path).sum() == 6 and [p.name for p in tmp_path.iterdir()] == ["rows.npy"]
    with pytest.raises(ValueError):
        NpyWriter.write(path, [np.ones((1, 3), "uint8")], (3, 3), "uint8")  # fewer rows than promised
    assert np.load(path).sum() == 6 and [p.name for p in tmp_path.iterdir()] == ["rows.npy"]


def test_fingerprints_follow_content_not_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "x").mkdir(parents=True)
        (folder / "x" / "1.bin").write_bytes(b"same")
    assert content_hash(a) == content_hash(b)
    (b / "x" / "1.bin").write_bytes(b"other")
    assert content_hash(a) != content_hash(b)
    assert digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1}) and len(digest("x", 12)) == 12
    (a / "manifest.csv").write_text("path,class,split,sha256\np1,c,test,h2\np2,c,test,h1\np3,c,train,h3\n")
    assert split_ids(a, ("train", "test")) == {"train": ["h3"], "test": ["h2", "h1"]}
    assert identity.test_set_id(a) == digest("h1\nh2")  # order-free: the same test images give the same id
