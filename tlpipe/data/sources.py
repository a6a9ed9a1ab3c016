"""Where raw images come from: a folder, a .zip, or an s3:// prefix, in class-folder or Kaggle-flat layout."""

from __future__ import annotations

import unicodedata
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from tlpipe.data.images import is_image_name
from tlpipe.data.storage import fetch, list_objects, s3_client, split_s3_uri
from tlpipe.errors import DataError

_IGNORED_PARTS = ("__MACOSX", ".DS_Store", "Thumbs.db")


class Source(Protocol):
    """A read-only tree of files addressed by relative POSIX paths."""

    description: str

    def list_files(self) -> list[str]:
        """Every file's relative path."""
        ...

    def list_dirs(self) -> list[str]:
        """Every folder's relative path (to find empty class folders)."""
        ...

    def read(self, rel: str) -> bytes:
        """The bytes of one file."""
        ...


class LocalSource:
    """A folder on disk."""

    def __init__(self, root: Path):
        self.root = root
        self.description = str(root)

    def list_files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def list_dirs(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_dir())

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class ZipSource:
    """A .zip read member by member: entries are checked and never extracted outside our control."""

    def __init__(self, path: Path, max_bytes: int, description: str | None = None):
        self.description = description or str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise DataError(f"data.source {path}: not a valid zip file") from None
        total = 0
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
                raise DataError(
                    f"data.source {path}: entry {name!r} would escape the extraction folder; "
                    "rebuild the zip with relative paths"
                )
            if info.is_dir() or (info.external_attr >> 16) & 0o170000 == 0o120000:
                continue  # folders carry no data; symlinks are never followed
            total += info.file_size
            self._members[PurePosixPath(*parts).as_posix()] = info
        if total > max_bytes:
            raise DataError(f"data.source {path}: unpacks to {total} bytes, over make_subset.max_zip_bytes={max_bytes}")

    def list_files(self) -> list[str]:
        return sorted(self._members)

    def list_dirs(self) -> list[str]:
        return sorted({p.rsplit("/", 1)[0] for p in self._members if "/" in p})

    def read(self, rel: str) -> bytes:
        return self._zip.read(self._members[rel])


class S3Source:
    """An s3:// prefix listed with a paginator; only the files asked for are downloaded."""

    def __init__(self, uri: str, endpoint_url: str | None, max_attempts: int):
        self.description = uri
        self.bucket, self.prefix = split_s3_uri(uri)
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self._client = s3_client(endpoint_url, max_attempts)
        self._uri, self._endpoint_url, self._max_attempts = uri, endpoint_url, max_attempts

    def _unreachable(self, exc: Exception) -> DataError:
        from tlpipe.redact import redact_text

        reason = redact_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return DataError(
            f"data.source {self.description}: cannot read it ({reason}); check the bucket, "
            "storage.endpoint_url and the AWS credentials in the environment"
        )

    def list_files(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            objects = list_objects(self._uri, self._endpoint_url, self._max_attempts)
        except self._client.exceptions.NoSuchBucket:
            raise DataError(f"data.source {self.description}: bucket {self.bucket!r} does not exist") from None
        except (BotoCoreError, ClientError) as exc:  # unreachable endpoint, denied, throttled after retries
            raise self._unreachable(exc) from None
        keys = [o["Key"][len(self.prefix) :] for o in objects]
        return sorted(k for k in keys if k and not k.endswith("/"))

    def list_dirs(self) -> list[str]:
        return []

    def read(self, rel: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client.get_object(Bucket=self.bucket, Key=self.prefix + rel)["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise self._unreachable(exc) from None


def open_source(spec: str, *, endpoint_url: str | None, max_attempts: int, max_zip_bytes: int) -> Source:
    """Open `data.source`: a folder, a .zip file, an s3://bucket/prefix or an s3://bucket/key.zip object."""
    if spec.startswith("s3://") and spec.lower().endswith(".zip"):
        # A zip object, not a prefix: downloaded once per ETag (storage.fetch), then read member by member.
        return ZipSource(fetch(spec, endpoint_url, max_attempts=max_attempts), max_zip_bytes, description=spec)
    if spec.startswith("s3://"):
        return S3Source(spec, endpoint_url, max_attempts)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data.source {spec}: not found; point data.source at a folder, a .zip or s3://bucket/prefix")
    if path.is_dir():
        return LocalSource(path)
    if path.suffix.lower() == ".zip":
        return ZipSource(path, max_zip_bytes)
    raise DataError(f"data.source {spec}: a file that is not a .zip; use a folder, a .zip or s3://bucket/prefix")


@dataclass(frozen=True)
class Listing:
    """Image files grouped by class, with the layout that was used."""

    layout: str
    files: dict[str, list[str]]
    ignored: list[str]


def _visible(rel: str) -> bool:
    parts = rel.split("/")
    return not any(p.startswith(".") or p in _IGNORED_PARTS for p in parts)


def _strip_wrapper(paths: list[str]) -> tuple[str, list[str]]:
    """Drop a single top folder that wraps everything (zips are often built that way)."""
    wrapper = ""
    while paths and all(p.count("/") >= 2 for p in paths) and len({p.split("/", 1)[0] for p in paths}) == 1:
        head = paths[0].split("/", 1)[0]
        wrapper += head + "/"
        paths = [p.split("/", 1)[1] for p in paths]
    return wrapper, paths


def _flat_class(name: str) -> str | None:
    stem = name.rsplit("/", 1)[-1]
    return stem.split(".", 1)[0] if stem.count(".") >= 2 else None


def classify(source: Source, layout: str) -> Listing:
    """Group a source's image files by class, choosing the layout when `layout` is auto."""
    files = [f for f in source.list_files() if _visible(f)]
    images = [f for f in files if is_image_name(f)]
    non_images = [f for f in files if not is_image_name(f)]
    if not images:
        raise DataError(
            f"data.source {source.description}: no image files found (looked for .jpg/.jpeg/.png/...); check the path"
        )
    wrapper, rel = _strip_wrapper(images)
    if layout == "auto":
        top_level = all("/" not in p for p in rel)
        one_dir_flat = len({p.split("/", 1)[0] for p in rel}) == 1 and len({_flat_class(p) for p in rel}) > 1
        layout = "flat" if top_level or one_dir_flat else "folders"
    groups: dict[str, list[str]] = defaultdict(list)
    ignored = list(non_images)
    for full, short in zip(images, rel, strict=True):
        if layout == "folders":
            cls = short.split("/", 1)[0] if "/" in short else None
        else:
            cls = _flat_class(short)
        if cls is None:
            ignored.append(full)
        else:
            groups[unicodedata.normalize("NFC", cls)].append(full)
    if layout == "folders":
        for d in source.list_dirs():
            if d.startswith(wrapper) and d != wrapper.rstrip("/"):
                top = d[len(wrapper) :].split("/", 1)[0]
                if top and _visible(top):
                    groups.setdefault(unicodedata.normalize("NFC", top), [])
    if not groups:
        raise DataError(
            f"data.source {source.description}: no image matched layout {layout!r} "
            "(folders: <class>/<file>; flat: <class>.<n>.<ext>); set data.layout"
        )
    return Listing(layout=layout, files={k: sorted(v) for k, v in sorted(groups.items())}, ignored=sorted(ignored))
