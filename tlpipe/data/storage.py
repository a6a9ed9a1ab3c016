"""Files wherever they live, through fsspec: local paths, s3:// (s3fs) and the members of a .zip.

- `filesystem`: the fsspec filesystem for a URI (s3fs with the standard credential chain, configured retries
  and an optional endpoint such as MinIO; the local filesystem otherwise).
- `list_objects`: an s3:// prefix's objects (key, size, ETag) from one listing: what `data_fingerprint` hashes.
- `fetch`: a local path for a local file or an s3:// object, downloaded into fsspec's whole-file cache and
  fetched again only when the object's ETag changes (`check_files`: s3fs's `ukey` is the ETag).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from fsspec.implementations.cache_mapper import HashCacheMapper

from tlpipe.errors import PipelineError


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into (bucket, key)."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise PipelineError(f"{uri!r} is not an s3:// URI; write s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise PipelineError(f"{uri!r} has no bucket; write s3://bucket/key")
    return bucket, key


def filesystem(uri: str, endpoint_url: str | None = None, max_attempts: int = 5) -> Any:
    """The fsspec filesystem for `uri`: s3fs for s3://, the local one otherwise.

    The s3 endpoint comes from params, else from AWS_ENDPOINT_URL(_S3), which botocore reads itself.
    """
    import fsspec

    if not uri.startswith("s3://"):
        return fsspec.filesystem("file")
    return fsspec.filesystem(
        "s3",
        endpoint_url=endpoint_url or None,
        config_kwargs={
            "retries": {"max_attempts": max_attempts, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 60,
        },
        skip_instance_cache=True,  # a new endpoint or credentials in the environment take effect
    )


def list_objects(uri: str, endpoint_url: str | None = None, max_attempts: int = 5) -> list[dict]:
    """Every object under an s3:// prefix (a folder prefix gets its trailing /; a .zip key is listed as is).

    Returns:
        `Key`, `Size` and `ETag` of each object, in key order.
    """
    bucket, prefix = split_s3_uri(uri)
    if prefix and not prefix.endswith("/") and not prefix.lower().endswith(".zip"):
        prefix += "/"
    fs = filesystem(uri, endpoint_url, max_attempts)
    path = f"{bucket}/{prefix}"
    found = {path: fs.info(path)} if prefix.lower().endswith(".zip") else fs.find(path, detail=True)
    return [
        {"Key": name.split("/", 1)[1], "Size": info["size"], "ETag": info.get("ETag", "")}
        for name, info in sorted(found.items())
        if info.get("type") != "directory"
    ]


class _HashKeepingSuffix(HashCacheMapper):
    # fsspec's mappers keep either the path's hash (no suffix) or its basename (collisions); Keras picks the
    # loader from the suffix (`.keras`, `.weights.h5`), so the cached name is the hash plus the suffixes.
    def __call__(self, path: str) -> str:
        return super().__call__(path) + "".join(PurePosixPath(path).suffixes[-2:])


def fetch(
    uri: str, endpoint_url: str | None = None, cache_dir: str | Path | None = None, max_attempts: int = 5
) -> Path:
    """Return a local path for a local path or an s3:// URI (downloaded once per ETag into cache_dir)."""
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.exists():
            raise PipelineError(f"{uri}: file not found")
        return path
    from filelock import FileLock
    from fsspec.implementations.cached import WholeFileCacheFileSystem

    from tlpipe.fingerprint import digest
    from tlpipe.redact import redact_text

    # One cache per endpoint (two object stores may hold the same bucket and key), one process at a time:
    # fsspec writes a download straight into the cached file.
    base = Path(cache_dir or os.path.join(tempfile.gettempdir(), "tlpipe-s3")) / digest(endpoint_url or "aws", 12)
    base.mkdir(parents=True, exist_ok=True)
    cached = WholeFileCacheFileSystem(
        fs=filesystem(uri, endpoint_url, max_attempts),
        cache_storage=str(base),
        check_files=True,
        cache_mapper=_HashKeepingSuffix(),
    )
    try:
        with FileLock(str(base / ".lock")), cached.open(uri, "rb") as fh:
            return Path(fh.name)
    except FileNotFoundError:
        raise PipelineError(f"{uri}: no such object; check the bucket and the key") from None
    except Exception as exc:  # FileNotFoundError, PermissionError, botocore's connection errors: "cannot read"
        reason = redact_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        raise PipelineError(f"{uri}: cannot read it ({reason})") from None
