"""Every content fingerprint in one place: what keys caches, jobs, studies and comparisons.

- `digest`: sha256 of a JSON-able value (job ids, study names, cache keys), optionally shortened.
- `content_hash`: sha256 over a file, or a folder's relative paths and contents.

What identifies a dataset (split ids, the test set, the data behind `data.source`) is built from these in
`tlpipe/data/identity.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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
