"""S3 access through boto3: standard credential chain, configured retries, optional endpoint (MinIO)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tlpipe.errors import PipelineError
from tlpipe.fs import atomic_file


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into (bucket, key)."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise PipelineError(f"{uri!r} is not an s3:// URI; write s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise PipelineError(f"{uri!r} has no bucket; write s3://bucket/key")
    return bucket, key


def s3_client(endpoint_url: str | None = None, max_attempts: int = 5):
    """A boto3 S3 client; endpoint from params, else AWS_ENDPOINT_URL(_S3) which boto3 reads itself."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def list_objects(uri: str, endpoint_url: str | None = None, max_attempts: int = 5) -> list[dict]:
    """Every object under an s3:// prefix (a folder prefix gets its trailing /; a .zip key is listed as is).

    Returns:
        The listing's object records (`Key`, `Size`, `ETag`, ...), in key order.
    """
    bucket, prefix = split_s3_uri(uri)
    if prefix and not prefix.endswith("/") and not prefix.lower().endswith(".zip"):
        prefix += "/"
    pages = (
        s3_client(endpoint_url, max_attempts).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [obj for page in pages for obj in page.get("Contents", [])]


def fetch(
    uri: str, endpoint_url: str | None = None, cache_dir: str | Path | None = None, max_attempts: int = 5
) -> Path:
    """Return a local path for a local path or an s3:// URI (downloaded once per ETag into cache_dir)."""
    if not uri.startswith("s3://"):
        path = Path(uri)
        if not path.exists():
            raise PipelineError(f"{uri}: file not found")
        return path
    bucket, key = split_s3_uri(uri)
    client = s3_client(endpoint_url, max_attempts)
    try:
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except Exception as exc:  # botocore ClientError (404/403) or connection errors
        raise PipelineError(f"{uri}: cannot read it ({exc})") from None
    base = Path(cache_dir or os.path.join(tempfile.gettempdir(), "tlpipe-s3"))
    # Keyed by ETag: a changed object is fetched again, an unchanged one is not.
    target = base / bucket / etag / key
    if target.exists():
        return target
    try:
        with atomic_file(target) as staged:
            client.download_file(bucket, key, str(staged))
    except Exception as exc:  # botocore raises several unrelated types; all mean "could not fetch"
        raise PipelineError(f"{uri}: download failed ({exc})") from None
    return target
