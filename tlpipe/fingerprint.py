"""Every content fingerprint in one place: what keys caches, jobs, studies and comparisons.

- `digest`: sha256 of a JSON-able value (job ids, study names, cache keys), optionally shortened.
- `content_hash`: sha256 over a file, or a folder's relative paths and contents.
- `split_ids`: the image hashes (sha256 column of the manifest) of some splits, as make_subset recorded them.
- `test_set_id`: two test scores are comparable only when these match.
- `data_fingerprint`: the data behind `data.source` now (KFP's cache key for the step that reads it: a URI
  stays the same when the files behind it change). An s3:// prefix is hashed from one listing (key, size,
  ETag), no downloads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tlpipe.sections import BUILTIN


def digest(value: Any, length: int = 64) -> str:
    """sha256 (hex, first `length` characters) of a string, bytes, or a JSON-able value (keys sorted)."""
    if isinstance(value, str):
        value = value.encode()
    elif not isinstance(value, bytes):
        value = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(value).hexdigest()[:length]


def unit_interval(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts` (the first 8 bytes of their sha256): stable split keys."""
    data = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(data[:8], "big") / 2**64


def content_hash(path: str | Path) -> str:
    """A sha256 over a file, or over a folder's relative paths and file contents (sorted)."""
    path = Path(path)
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        sha.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()


def split_ids(subset: Path, splits: tuple[str, ...]) -> dict[str, list[str]]:
    """The sha256 of every image of `splits`, in manifest order, per split (one manifest read)."""
    from tlpipe.data.datasets import read_manifest

    manifest = read_manifest(subset, ["split", "sha256"])
    return {split: list(manifest.loc[manifest["split"] == split, "sha256"]) for split in splits}


def test_set_id(subset: Path) -> str:
    """A sha256 over the test split's file hashes: two scores are comparable only when these match."""
    return digest("\n".join(sorted(split_ids(subset, ("test",))["test"])))


def data_fingerprint(params: Any) -> str:
    """`<kind>:<sha256>` for the data the run will read (`data.source`)."""
    data_source = params.data.source
    if data_source == BUILTIN:
        return "embedded:" + digest(params.make_digits.model_dump(mode="json"))
    if data_source.startswith("s3://"):
        from tlpipe.data.storage import list_objects

        listing = "".join(
            f"{o['Key']}\0{o['Size']}\0{o['ETag']}\n" for o in list_objects(data_source, params.storage.endpoint_url)
        )
        return "s3:" + digest(listing)
    path = Path(data_source)
    if not path.exists():
        from tlpipe.errors import DataError

        raise DataError(f"data.source {data_source}: not found (a folder, a .zip, s3://bucket/prefix or {BUILTIN})")
    return "local:" + content_hash(path)
