"""What identifies a dataset: its splits' image hashes, its test set, and the data behind `data.source`.

- `split_ids`: the image hashes (sha256 column of the manifest) of some splits, as make_subset recorded them.
- `test_set_id`: two test scores are comparable only when these match.
- `data_fingerprint`: the data behind `data.source` now (KFP's cache key for the step that reads it: a URI
  stays the same when the files behind it change). An s3:// prefix is hashed from one listing (key, size,
  ETag; fsspec), no downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlpipe.fingerprint import content_hash, digest
from tlpipe.sections import BUILTIN


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
