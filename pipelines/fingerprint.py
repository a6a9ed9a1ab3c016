"""The data fingerprint that keys KFP's cache on the data behind `data.source`.

KFP caches a task on its inputs: parameter values, input artifacts and the component itself. `data.source` is
a URI that stays the same when the files behind it change, so the pipeline's uncached `data_fingerprint`
task (pipelines/runtime.py `fingerprint_data`) hashes what is there now and passes it to the step whose
`fingerprint` field names its data input (`make_subset`). New data reruns everything downstream; the same
data and params reuse the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tlpipe.config import Params
from tlpipe.sections import BUILTIN


def s3_listing_hash(uri: str, endpoint_url: str | None = None) -> str:
    """sha256 over key, size and ETag of every object under an s3:// prefix (one listing, no downloads)."""
    from tlpipe.data.storage import s3_client, split_s3_uri

    bucket, prefix = split_s3_uri(uri)
    if prefix and not prefix.endswith("/") and not prefix.lower().endswith(".zip"):
        prefix += "/"
    digest = hashlib.sha256()
    pages = s3_client(endpoint_url).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            digest.update(f"{obj['Key']}\0{obj['Size']}\0{obj['ETag']}\n".encode())
    return digest.hexdigest()


def local_hash(path: Path) -> str:
    """sha256 over relative paths and contents of a file or folder."""
    from tlpipe.tracking.lineage import content_hash

    return content_hash(path)


def data_fingerprint(params: Params) -> str:
    """`<kind>:<sha256>` for the data the run will read (`data.source`)."""
    data_source = params.data.source
    if data_source == BUILTIN:
        blob = json.dumps(params.make_digits.model_dump(mode="json"), sort_keys=True).encode()
        return "embedded:" + hashlib.sha256(blob).hexdigest()
    if data_source.startswith("s3://"):
        return "s3:" + s3_listing_hash(data_source, params.storage.endpoint_url)
    path = Path(data_source)
    if not path.exists():
        from tlpipe.errors import DataError

        raise DataError(f"data.source {data_source}: not found (a folder, a .zip, s3://bucket/prefix or {BUILTIN})")
    return "local:" + local_hash(path)
