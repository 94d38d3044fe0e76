"""Paths: local folders and URLs (gs://, s3://, memory://, any fsspec filesystem) behind one small API.

    p = as_path("runs/demo/mbc")           # a pathlib.Path, exactly as before
    p = as_path("gs://bucket/runs/mbc")    # a UrlPath: / name parent exists is_dir iterdir glob read_text ...
    atomic_write(p / "summary.json", text) # local: temporary file + rename; URL: one put

What each backend guarantees:

- Local paths (and `file://` URLs, which become local paths) stay `pathlib.Path`: nothing changes for local runs.
  `atomic_write` writes a temporary file next to the target and renames it over the target.
- URLs go through fsspec (`gs://` needs gcsfs: `pip install 'mbc-jax[gcs]'`). `atomic_write` renders the
  whole file in memory and stores it with one put: on object stores (GCS, S3, Azure) a put is atomic per
  object, so a reader sees the old object or the new one, never half. Object stores have no append and no
  atomic rename, and this layer uses neither (RunWriter rewrites metrics.jsonl whole; see its `metrics`).
- Orbax gets the URL itself (`orbax_dir`): an `etils.epath.Path("gs://...")`, which orbax writes through
  tensorstore's GCS driver. Orbax 0.12 writes checkpoints to local (or mounted) folders and gs:// only, so
  another URL scheme is refused for checkpoints, except a filesystem that maps its URLs onto a local folder
  (it has a `local_path(url)` method; the tests' emulation of a bucket is one).
- Files a library must read from a local folder (a tokenizer, a checkpoint's safetensors, a Parquet file)
  are downloaded once into a cache (`fetch`: $MBC_JAX_CACHE, default ~/.cache/mbc-jax/urls) and refreshed
  when the remote file changes; folders written by such a library are staged locally and uploaded (`staged`).
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from etils import epath

from mbc_jax.errors import UserError

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: a Windows drive is no scheme
OBJECT_STORES = frozenset({"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss"})  # no folders, no append, no rename


def is_url(p: Any) -> bool:
    """True for a URL other than file:// (which is a local path)."""
    if isinstance(p, UrlPath):
        return True
    m = URL.match(str(p)) if isinstance(p, str) else None
    return m is not None and m.group(1) != "file"


def as_path(p: str | os.PathLike | UrlPath) -> Path | UrlPath:
    """A pathlib.Path for a local path (or file:// URL), a UrlPath for any other URL."""
    if isinstance(p, (Path, UrlPath)):
        return p
    s = os.fspath(p)
    if not is_url(s):
        return Path(s[len("file://"):] if s.startswith("file://") else s)
    return UrlPath(s)


def _filesystem(url: str, scheme: str) -> fsspec.AbstractFileSystem:
    try:
        return fsspec.filesystem(scheme)
    except ImportError as e:
        extra = " (pip install 'mbc-jax[gcs]')" if scheme in ("gs", "gcs") else ""
        raise UserError(f"{url}: {scheme}:// needs a package that is not installed: {e}{extra}") from None
    except ValueError as e:
        raise UserError(f"{url}: {e}; use a local path or a URL fsspec knows (gs://, s3://, ...)") from None


class UrlPath:
    """A file or folder behind a URL, with the part of pathlib's API the run folder code uses.
    It has no `__fspath__`, so `open(url_path)` fails instead of writing a local folder named "gs:"."""

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem | None = None):
        scheme, rest = url.split("://", 1)
        rest = posixpath.normpath(rest) if rest.strip("/") else ""
        self.scheme, self.url = scheme, f"{scheme}://{rest}"
        self._fs = fs

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (made on first use: pure path operations need no package)."""
        if self._fs is None:
            self._fs = _filesystem(self.url, self.scheme)
        return self._fs

    @property
    def key(self) -> str:
        """The filesystem's own name for this path."""
        return self.fs._strip_protocol(self.url)

    # -- pure path operations
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: UrlPath) -> bool:
        return self.url < other.url

    def __truediv__(self, part: str | os.PathLike) -> UrlPath:
        return UrlPath(posixpath.join(self.url, os.fspath(part)), self._fs)

    def joinpath(self, *parts: str) -> UrlPath:
        out = self
        for p in parts:
            out = out / p
        return out

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.split("://", 1)[1])

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(f"{self.scheme}://{posixpath.dirname(self.url.split('://', 1)[1])}", self._fs)

    def with_name(self, name: str) -> UrlPath:
        return self.parent / name

    def absolute(self) -> UrlPath:
        return self

    resolve = expanduser = absolute

    def is_absolute(self) -> bool:
        return True

    # -- the filesystem
    def _fresh(self) -> None:  # listings may be cached (gcsfs); orbax and other hosts write behind our back
        self.fs.invalidate_cache(self.key)

    def exists(self) -> bool:
        self._fresh()
        return self.fs.exists(self.key)

    def is_dir(self) -> bool:
        self._fresh()
        return self.fs.isdir(self.key)

    def is_file(self) -> bool:
        self._fresh()
        return self.fs.isfile(self.key)

    def iterdir(self) -> Iterator[UrlPath]:
        self._fresh()
        names = {posixpath.basename(str(e).rstrip("/")) for e in self.fs.ls(self.key, detail=False)}
        for name in sorted(names - {"", self.name}):
            yield self / name

    def glob(self, pattern: str) -> Iterator[UrlPath]:
        """The entries of this folder whose name matches `pattern` (one level: no / and no **)."""
        if "/" in pattern:
            raise ValueError(f"UrlPath.glob: one folder level only, got {pattern!r}")
        try:
            entries = list(self.iterdir())
        except FileNotFoundError:  # as pathlib's glob: nothing in a folder that is not there
            entries = []
        return (p for p in entries if fnmatch.fnmatchcase(p.name, pattern))

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        """As pathlib's: universal newlines (a CSV's \\r\\n reads as \\n)."""
        return io.TextIOWrapper(io.BytesIO(self.read_bytes()), encoding=encoding).read()

    def write_bytes(self, data: bytes) -> int:
        atomic_write(self, data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        atomic_write(self, text.encode(encoding))
        return len(text)

    def open(self, mode: str = "r", newline: str | None = None, encoding: str | None = None) -> IO:
        """For reading; writes go through `atomic_write` (one put), and there is no append."""
        if mode not in ("r", "rb", "rt"):
            raise ValueError(f"{self}: open({mode!r}): only reading; write with atomic_write")
        if mode == "rb":
            return self.fs.open(self.key, "rb")
        return io.TextIOWrapper(self.fs.open(self.key, "rb"), encoding=encoding or "utf-8", newline=newline)

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Nothing on an object store (a folder is a name prefix, there once a file is in it)."""
        if self.scheme not in OBJECT_STORES:
            self.fs.makedirs(self.key, exist_ok=True)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise
        self._fresh()

    def stat(self) -> types.SimpleNamespace:
        """st_size and st_mtime (seconds). An object store keeps no time for a folder (a name prefix): its
        st_mtime is that of the newest object directly in it (0 if none)."""
        self._fresh()
        info = self.fs.info(self.key)
        mtime = _mtime(info)
        if not mtime and info.get("type") == "directory":
            mtime = max((_mtime(e) for e in self.fs.ls(self.key, detail=True)), default=0.0)
        return types.SimpleNamespace(st_size=int(info.get("size") or 0), st_mtime=mtime)


def _mtime(info: dict) -> float:
    for key in ("mtime", "updated", "LastModified", "last_modified", "created"):
        v = info.get(key)
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
        if isinstance(v, datetime.datetime):
            return v.timestamp()
    return 0.0


# ----------------------------------------------------------------------------- writing


def check_output_file(path: str | os.PathLike | UrlPath, what: str = "--out") -> Path | UrlPath:
    """The output file `path`, checked before any work starts: a URL's filesystem package is installed, and a
    local path is not a folder and lies under a folder this process can create files in. Else one UserError."""
    out = as_path(path)
    if isinstance(out, UrlPath):
        out.fs  # noqa: B018 (makes the filesystem: a missing package, e.g. gcsfs for gs://, fails here)
        return out
    if out.is_dir():
        raise UserError(f"{what} {out}: is a folder; give a file name")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out}: cannot write in {parent} (permission denied)")
    return out


def atomic_write(path: str | os.PathLike | UrlPath, content: str | bytes | Callable[[IO], None], *,
                 newline: str | None = None, fsync: bool = False) -> Path | UrlPath:
    """Writes `content` (text, bytes, or a function given the open text file) so that a reader sees the old
    file or the new one, never half. Local: a temporary file next to `path`, renamed over it (safe from
    several threads and processes at once; `fsync` also survives a power cut). URL: the whole file in one
    put (atomic per object on object stores, which also make it durable before answering)."""
    path = as_path(path)
    if isinstance(path, UrlPath):
        if callable(content):
            buf = io.StringIO(newline=newline)
            content(buf)
            content = buf.getvalue()
        path.fs.pipe_file(path.key, content if isinstance(content, bytes) else content.encode("utf-8"))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        binary = isinstance(content, bytes)
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": newline, "encoding": "utf-8"})) as f:
            content(f) if callable(content) else f.write(content)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_jsonl(path: str | os.PathLike | UrlPath, rows: Iterable[dict]) -> int:
    """Writes `rows` as JSON lines, atomically (`atomic_write`); returns how many."""
    n = 0

    def body(f: IO) -> None:
        nonlocal n
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1

    atomic_write(path, body)
    return n


@contextlib.contextmanager
def staged(dest: str | os.PathLike | UrlPath) -> Iterator[Path]:
    """A local folder for a library that writes only to local folders (a tokenizer's save_pretrained, an
    export): `dest` itself when local; for a URL a temporary folder whose files are uploaded into `dest`
    (each with one put) when the block ends without an error."""
    dest = as_path(dest)
    if isinstance(dest, Path):
        yield dest
        return
    with tempfile.TemporaryDirectory(prefix="mbc-jax-stage-") as tmp:
        yield Path(tmp)
        upload(Path(tmp), dest)


def upload(local: Path, dest: UrlPath, only_changed: dict | None = None) -> None:
    """Copies the files of local folder `local` into `dest`. With `only_changed` (a dict kept by the caller
    between calls) only files whose size or time changed since the last call are sent."""
    for f in sorted(local.rglob("*")):
        if not f.is_file():
            continue
        stamp = (f.stat().st_size, f.stat().st_mtime_ns)
        if only_changed is not None:
            if only_changed.get(f) == stamp:
                continue
            only_changed[f] = stamp
        atomic_write(dest / f.relative_to(local).as_posix(), f.read_bytes())


# ----------------------------------------------------------------------------- reading into local files


def cache_dir(url: str | UrlPath) -> Path:
    """The local folder that mirrors `url`: $MBC_JAX_CACHE/<hash of the URL>/<its last name>."""
    url = str(url)
    root = Path(os.environ.get("MBC_JAX_CACHE") or Path.home() / ".cache" / "mbc-jax" / "urls")
    name = posixpath.basename(url.rstrip("/")) or "root"
    return root / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _stamp(info: dict) -> str:  # what tells one version of a remote file from another
    return json.dumps([str(info.get(k)) for k in ("size", "mtime", "updated", "generation", "ETag", "etag",
                                                  "LastModified", "md5Hash", "created")])


def fetch(path: str | os.PathLike | UrlPath) -> Path:
    """A local file or folder with the content of `path`: `path` itself when local; for a URL a copy in
    `cache_dir(url)`, downloaded the first time and refreshed file by file when the remote one changed (its
    size, time or generation). A URL that does not exist gives an empty local folder."""
    path = as_path(path)
    if isinstance(path, Path):
        return path
    local = cache_dir(path)
    if path.is_file():
        files = {"": path}
        target = lambda rel: local  # noqa: E731
    else:
        files = {posixpath.relpath(str(f), path.key): f for f in path.fs.find(path.key)}
        target = lambda rel: local / rel  # noqa: E731
        local.mkdir(parents=True, exist_ok=True)
    manifest_path = local.parent / f".{local.name}.fetched.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    for rel, key in files.items():
        stamp = _stamp(path.fs.info(key))
        dst = target(rel)
        if manifest.get(rel) == stamp and dst.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.fs.get_file(key, str(tmp))
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        manifest[rel] = stamp
    if path.is_dir():  # files deleted remotely go here too
        for f in [f for f in local.rglob("*") if f.is_file() and f.relative_to(local).as_posix() not in files]:
            f.unlink()
            manifest.pop(f.relative_to(local).as_posix(), None)
    atomic_write(manifest_path, json.dumps(manifest, indent=1))
    return local


def orbax_dir(path: str | os.PathLike | UrlPath) -> Path | epath.Path:
    """The folder as orbax's CheckpointManager gets it: a local folder as an absolute path (as always);
    gs:// as the URL itself (orbax writes it through tensorstore's GCS driver); a filesystem that maps its
    URLs onto a local folder (`fs.local_path(url)`) as that folder. Other URLs: orbax cannot write them."""
    path = as_path(path)
    if isinstance(path, Path):
        return path.absolute()
    if path.scheme in ("gs", "gcs"):
        return epath.Path("gs://" + path.url.split("://", 1)[1])
    local_path = None if path.scheme in OBJECT_STORES else getattr(path.fs, "local_path", None)
    if callable(local_path):
        return Path(local_path(path.url))
    raise UserError(f"{path}: orbax writes checkpoints to local (or mounted) folders and gs:// only; put the run "
                    f"folder on gs:// or on a local or mounted folder (for {path.scheme}://, a FUSE mount)")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a local file's bytes, read 1 MiB at a time (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
