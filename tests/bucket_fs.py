"""A local emulation of an object-store bucket for the tests: `bucket://NAME/KEY` URLs, stored as files under
the folder $MBC_TEST_BUCKET_ROOT, behaving as an object store does where the run folder code could notice:

- a put (`pipe_file`) is atomic per object (written aside, then renamed into place);
- there is no append, no open-for-write and no rename (object stores have none; mbc_jax/paths.py must not
  rely on them);
- `local_path(url)`: where a URL's objects lie, which `mbc_jax.paths.orbax_dir` hands to orbax (orbax writes
  only local folders and gs://; the emulation cannot reach tensorstore's GCS driver).

A subprocess sees the same bucket when it inherits $MBC_TEST_BUCKET_ROOT and runs `RUN_MBC_JAX` (which
registers the protocol, then runs `python -m mbc_jax`)."""

from __future__ import annotations

import os
import posixpath
import sys
import threading
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "bucket"
ROOT_ENV = "MBC_TEST_BUCKET_ROOT"
TESTS = str(Path(__file__).resolve().parent)


class BucketFileSystem(LocalFileSystem):
    protocol = PROTOCOL
    root_marker = "/"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(PROTOCOL + "://"):
            key = posixpath.normpath(path[len(PROTOCOL) + 3:]).lstrip("/")
            return os.path.join(os.environ[ROOT_ENV], key).rstrip("/")
        return LocalFileSystem._strip_protocol(path)

    def local_path(self, url: str) -> str:
        return self._strip_protocol(url)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        path = self._strip_protocol(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        uploads = os.path.join(os.environ[ROOT_ENV], ".uploads")  # out of every listing, as a put in flight is
        os.makedirs(uploads, exist_ok=True)
        tmp = os.path.join(uploads, f"{os.getpid()}-{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(value)
        os.replace(tmp, path)

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode or "+" in mode:
            raise NotImplementedError(f"bucket://: open({mode!r}): an object store has no append or partial "
                                      "write; store whole objects (pipe_file)")
        return super()._open(path, mode, **kwargs)

    def mv(self, *args, **kwargs):
        raise NotImplementedError("bucket://: an object store has no rename")

    rename = move = mv


def register() -> None:
    fsspec.register_implementation(PROTOCOL, BucketFileSystem, clobber=True)


# `python -c RUN_MBC_JAX train ...`: the CLI, in a process that knows bucket://
RUN_MBC_JAX = (f"import sys; sys.path.insert(0, {TESTS!r}); import bucket_fs; bucket_fs.register(); "
               "import runpy; runpy.run_module('mbc_jax', run_name='__main__')")


def cli(*args: str) -> list[str]:
    """The command line of `python -m mbc_jax ARGS` with bucket:// registered."""
    return [sys.executable, "-c", RUN_MBC_JAX, *args]
