"""The user's own data is a real DVC dependency of make_subset, whatever `data.source` is.

In a temporary git + DVC copy of this repo, with `data.source` a local folder, a local zip or an S3 prefix
(moto on loopback, found by DVC's s3fs and by boto3 through AWS_ENDPOINT_URL): after `dvc repro make_subset`,
changing an image, adding one and removing one each make `dvc status make_subset` report the source
changed, and undoing the change makes it clean again. Also: `data.source: s3://bucket/key.zip` is read by
make_subset as a zip (downloaded once per ETag), not listed as a prefix.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, git_project, make_tree, png, write_params

pytestmark = pytest.mark.slow
CLASSES, PER_CLASS = ("a", "b"), 6
SMALL = {"train_per_class": 2, "val_per_class": 1, "test_per_class": 1, "seed": 3}


def _run(cmd: list[str], root: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _new_image(tmp: Path, seed: int) -> bytes:
    """PNG bytes of an image that is in no tree yet."""
    return png(tmp / f"new-{seed}.png", seed + 1000, mode="RGB").read_bytes()


@pytest.fixture
def project(tmp_path):
    """A git + DVC copy of the tracked files; returns (root, env, stage_status) after `dvc repro make_subset`."""
    root = tmp_path / "tlpipe"
    env = git_project(root, skip=("dvc.lock", "data/"))

    def repro(source: str, extra_env: dict | None = None):
        env.update(extra_env or {})
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"]["source"] = source
        params["make_subset"].update(SMALL)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _run([sys.executable, "-m", "pipelines.dvc_yaml"], root, env)
        _run([sys.executable, "-m", "dvc", "repro", "make_subset"], root, env)
        return lambda: _changed(root, env)

    return root, repro


def _changed(root: Path, env: dict) -> list:
    """What `dvc status make_subset` says changed for the stage ([] = up to date)."""
    out = _run([sys.executable, "-m", "dvc", "status", "make_subset", "--json"], root, env).stdout
    return json.loads(out or "{}").get("make_subset", [])


def _assert_source_changed(status: list, source: str) -> None:
    deps = [entry["changed deps"] for entry in status if "changed deps" in entry]
    assert deps and any(source.rstrip("/") in k.rstrip("/") for k in deps[0]), status


def _edits(tree: Path, tmp: Path) -> list[tuple[str, bytes | None, bytes | None]]:
    """(relative path, new bytes or None to delete, bytes that undo it or None to delete): change, add, remove."""
    return [
        ("a/0.png", _new_image(tmp, 1), (tree / "a/0.png").read_bytes()),
        ("b/new.png", _new_image(tmp, 2), None),
        ("b/1.png", None, (tree / "b/1.png").read_bytes()),
    ]


def _put(tree: Path, rel: str, data: bytes | None) -> None:
    if data is None:
        (tree / rel).unlink()
    else:
        (tree / rel).write_bytes(data)


def test_local_folder_is_a_dependency(project, tmp_path):
    root, repro = project
    raw = make_tree(root / "data" / "raw" / "photos", CLASSES, PER_CLASS)
    status = repro("data/raw/photos")
    assert status() == []
    for rel, data, undo in _edits(raw, tmp_path):
        _put(raw, rel, data)
        _assert_source_changed(status(), "data/raw/photos")
        _put(raw, rel, undo)
        assert status() == [], rel


def _zip(tree: Path, path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(tree.rglob("*.png")):
            zf.writestr(zipfile.ZipInfo(file.relative_to(tree).as_posix()), file.read_bytes())  # fixed dates


def test_local_zip_is_a_dependency(project, tmp_path):
    root, repro = project
    tree = make_tree(tmp_path / "tree", CLASSES, PER_CLASS)
    archive = root / "data" / "raw" / "photos.zip"
    archive.parent.mkdir(parents=True)
    _zip(tree, archive)
    status = repro("data/raw/photos.zip")
    assert status() == []
    for rel, data, undo in _edits(tree, tmp_path):
        _put(tree, rel, data)
        _zip(tree, archive)
        _assert_source_changed(status(), "data/raw/photos.zip")
        _put(tree, rel, undo)
        _zip(tree, archive)  # byte for byte the first zip again
        assert status() == [], rel


@pytest.mark.servers
def test_s3_prefix_is_an_external_dependency(s3_server, project, tmp_path):
    import boto3

    root, repro = project
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="photos-prefix")
    tree = make_tree(tmp_path / "tree", CLASSES, PER_CLASS)
    for file in tree.rglob("*.png"):
        s3.put_object(Bucket="photos-prefix", Key=f"raw/{file.relative_to(tree).as_posix()}", Body=file.read_bytes())
    source = "s3://photos-prefix/raw/"
    status = repro(source, {"AWS_ENDPOINT_URL": s3_server})  # DVC's s3fs and make_subset's boto3 both read it
    assert status() == []
    for rel, data, undo in _edits(tree, tmp_path):
        for body in (data, undo):
            if body is None:
                s3.delete_object(Bucket="photos-prefix", Key=f"raw/{rel}")
            else:
                s3.put_object(Bucket="photos-prefix", Key=f"raw/{rel}", Body=body)
            if body is data:
                _assert_source_changed(status(), source)
        assert status() == [], rel  # the same objects again: same ETags


@pytest.mark.servers
def test_make_subset_reads_an_s3_zip_object(s3_server, tmp_path):
    import boto3

    tree = make_tree(tmp_path / "tree", CLASSES, PER_CLASS)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for file in sorted(tree.rglob("*.png")):
            zf.writestr(f"photos/{file.relative_to(tree).as_posix()}", file.read_bytes())
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="photos-zip")
    s3.put_object(Bucket="photos-zip", Key="sets/photos.zip", Body=buffer.getvalue())
    params = write_params(
        tmp_path / "params.yaml",
        "s3://photos-zip/sets/photos.zip",
        storage={"endpoint_url": s3_server, "max_attempts": 2},
        make_subset=SMALL,
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}  # the ETag cache under tmp_path
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.make_subset",
            "--params",
            str(params),
            "--raw",
            "s3://photos-zip/sets/photos.zip",
            "--subset",
            str(tmp_path / "subset"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "subset" / "summary.json").read_text())
    assert summary["source"] == "s3://photos-zip/sets/photos.zip" and summary["classes"] == list(CLASSES)
    assert summary["images"] == len(CLASSES) * 4


def _params(root: Path, source: str) -> None:
    """Edit params.yaml the way a user does: only data.source (and small splits), dvc.yaml left as it is."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["source"] = source
    params["make_subset"].update(SMALL)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_plain_dvc_repro_uses_the_edited_source_or_stops(project, tmp_path):
    """`data.source` edited in params.yaml, then plain `dvc repro make_subset`: when the graph's shape changed
    (builtin digits -> a folder) the stage stops in one line naming `make dvc.yaml` (nothing built); a path
    edited to another path is read from params.yaml by DVC (`${data.source}`) without regenerating."""
    root, repro = project
    repro("builtin:digits")
    env = {**os.environ, "PYTHONPATH": str(root), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    summary = root / "data/subset/summary.json"
    digits = summary.read_text()
    make_tree(root / "photos", CLASSES, PER_CLASS)
    make_tree(root / "photos2", CLASSES, PER_CLASS, seed=5)
    _params(root, "photos")
    stopped = _run([sys.executable, "-m", "dvc", "repro", "make_subset"], root, env, check=False)
    assert stopped.returncode != 0 and "run `make dvc.yaml`" in stopped.stdout + stopped.stderr
    # Nothing was built from the digits; DVC removed the stage's output before running it, and its cache and
    # dvc.lock still hold the last good one:
    assert not summary.exists() or summary.read_text() == digits
    _run([sys.executable, "-m", "dvc", "checkout", "data/subset"], root, env)
    assert summary.read_text() == digits
    _run([sys.executable, "-m", "pipelines.dvc_yaml"], root, env)
    _run([sys.executable, "-m", "dvc", "repro", "make_subset"], root, env)
    assert json.loads(summary.read_text())["source"].endswith("photos")
    _params(root, "photos2")  # a path -> another path: no regeneration needed
    _run([sys.executable, "-m", "dvc", "repro", "make_subset"], root, env)
    assert json.loads(summary.read_text())["source"].endswith("photos2")


def test_dvc_add_and_import_url_as_the_readme_shows(project, tmp_path):
    """README: `dvc add data/raw/photos`, commit the .dvc file, point data.source at it, run; add photos,
    `dvc add` again (a new data version: the .dvc file changes, make_subset is stale); `dvc import-url` of a
    folder and `dvc update` after it changed."""
    root, repro = project
    env = {**os.environ, "PYTHONPATH": str(root), "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    photos = make_tree(root / "data/raw/photos", CLASSES, PER_CLASS)
    _run([sys.executable, "-m", "dvc", "add", "data/raw/photos"], root, env)
    _run([*git, "add", "data/raw/photos.dvc", "data/raw/.gitignore"], root, env)
    _run([*git, "commit", "-qm", "photos v1"], root, env)
    first = (root / "data/raw/photos.dvc").read_text()
    status = repro("data/raw/photos")
    assert status() == []
    (photos / "a" / "extra.png").write_bytes(_new_image(tmp_path, 7))
    _run([sys.executable, "-m", "dvc", "add", "data/raw/photos"], root, env)
    assert (root / "data/raw/photos.dvc").read_text() != first
    _run([*git, "add", "data/raw/photos.dvc"], root, env)
    _run([*git, "commit", "-qm", "photos v2"], root, env)
    _assert_source_changed(status(), "data/raw/photos")
    outside = make_tree(tmp_path / "shared-drive", CLASSES, PER_CLASS, seed=9)
    _run([sys.executable, "-m", "dvc", "import-url", str(outside), "data/raw/imported"], root, env)
    _run([*git, "add", "data/raw/imported.dvc", "data/raw/.gitignore"], root, env)
    imported = (root / "data/raw/imported.dvc").read_text()
    (outside / "b" / "extra.png").write_bytes(_new_image(tmp_path, 8))
    _run([sys.executable, "-m", "dvc", "update", "data/raw/imported.dvc"], root, env)
    assert (root / "data/raw/imported.dvc").read_text() != imported
    assert (root / "data/raw/imported/b/extra.png").is_file()
