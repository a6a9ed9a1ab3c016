"""Where raw images come from: a folder, a .zip, or an s3:// prefix, in class-folder or Kaggle-flat layout."""

from __future__ import annotations

import unicodedata
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from tlpipe.data.images import is_image_name
from tlpipe.data.storage import fetch, filesystem, split_s3_uri
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


class FsSource:
    """A read-only tree of files on an fsspec filesystem under `root` (a folder, an s3:// prefix, a zip).

    Args:
        fs: the filesystem.
        root: the tree's root on it ("" for a zip's top).
        description: how messages name the source (the user's `data.source`).
        members: the only paths that exist (a zip's checked members), None for every file under root.
    """

    def __init__(self, fs, root: str, description: str, members: set[str] | None = None):
        self.fs, self.root, self.description, self._members = fs, root.rstrip("/"), description, members

    def _rel(self, path: str) -> str:
        return path[len(self.root) + 1 :] if self.root else path.lstrip("/")

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def _failed(self, exc: Exception) -> DataError:
        from tlpipe.redact import redact_text

        reason = redact_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return DataError(
            f"data.source {self.description}: cannot read it ({reason}); check the path, "
            "storage.endpoint_url and the AWS credentials in the environment"
        )

    def _find(self, withdirs: bool) -> dict[str, dict]:
        try:
            return self.fs.find(self.root, withdirs=withdirs, detail=True)
        except FileNotFoundError:
            raise DataError(f"data.source {self.description}: does not exist; check the path or the bucket") from None
        except Exception as exc:  # s3fs: PermissionError, endpoint unreachable, throttled after retries
            raise self._failed(exc) from None

    def list_files(self) -> list[str]:
        found = [self._rel(p) for p, info in self._find(False).items() if info.get("type") != "directory"]
        files = sorted(r for r in found if r and not r.endswith("/"))
        return [r for r in files if r in self._members] if self._members is not None else files

    def list_dirs(self) -> list[str]:
        found = sorted(self._rel(p) for p, info in self._find(True).items() if info.get("type") == "directory")
        return [d for d in found if d]

    def read(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._abs(rel))
        except Exception as exc:  # a file that vanished, a denied or unreachable object store
            raise self._failed(exc) from None


class LocalSource(FsSource):
    """A folder on disk."""

    def __init__(self, root: Path):
        super().__init__(filesystem(str(root)), Path(root).resolve().as_posix(), str(root))


class ZipSource(FsSource):
    """A .zip read member by member (fsspec's ZipFileSystem): entries are checked first, never extracted."""

    def __init__(self, path: Path, max_bytes: int, description: str | None = None):
        from fsspec.implementations.zip import ZipFileSystem

        try:
            fs = ZipFileSystem(str(path))
        except zipfile.BadZipFile:
            raise DataError(f"data.source {path}: not a valid zip file") from None
        total, members = 0, set()
        for info in fs.zip.infolist():
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
            members.add(PurePosixPath(*parts).as_posix())
        if total > max_bytes:
            raise DataError(f"data.source {path}: unpacks to {total} bytes, over make_subset.max_zip_bytes={max_bytes}")
        super().__init__(fs, "", description or str(path), members)


class S3Source(FsSource):
    """An s3:// prefix listed once (s3fs); only the files asked for are downloaded."""

    def __init__(self, uri: str, endpoint_url: str | None, max_attempts: int):
        bucket, prefix = split_s3_uri(uri)
        super().__init__(filesystem(uri, endpoint_url, max_attempts), f"{bucket}/{prefix}", uri)


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
