"""Output rows written as they are made, resumable after a kill: `OUT.partial`, renamed to OUT when complete.

    part = PartialOutput(out, fingerprint)       # what made the rows: model, data file (size, mtime), settings
    state = part.open()                          # None: a fresh start; else the state of the last commit
    for chunk in ...:
        part.commit(lines, {"chunks": k + 1, ...})  # rows on disk (flushed, fsynced) first, then the state
    part.finish()                                # OUT.partial -> OUT, the state file removed

`OUT.partial.json` holds the fingerprint, the caller's state and the partial file's length at the last commit:
a rerun with the same fingerprint cuts the partial file back to that length (a chunk half written when the
process died is dropped) and goes on from the caller's state; a rerun with another fingerprint is one
UserError naming what differs. A URL OUT gets a local partial file (no resume across machines), copied up by
`finish`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from mbc_jax import UserError
from mbc_jax.paths import UrlPath, as_path, atomic_write

KILL_ENV = "MBC_JAX_TEST_KILL_AFTER_CHUNKS"  # tests: SIGKILL this process right after its N-th commit


def data_fingerprint(path: str) -> dict:
    """What tells one version of a data file from another without reading it: its size and mtime (local files;
    a URL or `hf:` name is kept as given)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path}
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two fingerprints."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


class PartialOutput:
    """The partial file of one output and its state file (see the module's docstring)."""

    def __init__(self, out: str, fingerprint: dict):
        self.out, self.fingerprint = as_path(out), json.loads(json.dumps(fingerprint))  # as it reads back
        if isinstance(self.out, UrlPath):
            self.local = Path(tempfile.mkdtemp(prefix="mbc-jax-partial-")) / self.out.name
        else:
            self.local = self.out
        self.partial = self.local.with_name(self.local.name + ".partial")
        self.state_path = self.local.with_name(self.local.name + ".partial.json")
        self._file: IO[bytes] | None = None
        self.commits, self.resumed = 0, False

    def open(self, write: bool = True) -> dict | None:
        """Opens the partial file for appending: the caller's state of the last commit when a matching one is
        there (the file cut back to it), None for a fresh start (an earlier partial file without state, made
        before its first commit, is started over). `write=False` (the processes of a multi-host run other than
        the writer, on a shared file system) only reads and checks the state."""
        state = self._read_state()
        if state is not None:
            diff = differences(state["fingerprint"], self.fingerprint)
            if diff:
                raise UserError(f"{self.partial}: left by an earlier run with other inputs or settings ("
                                + "; ".join(diff[:3]) + (f"; +{len(diff) - 3} more" if len(diff) > 3 else "")
                                + f"); rerun with those, or delete {self.partial} and {self.state_path} "
                                "to start over")
            if not self.partial.is_file() or self.partial.stat().st_size < state["bytes"]:
                raise UserError(f"{self.partial}: shorter than its state file {self.state_path} records; "
                                f"delete both to start over")
        if not write:
            return None if state is None else state["state"]
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "r+b" if state is not None else "wb")
        if state is not None:
            self.resumed = True
            self._file.truncate(state["bytes"])
            self._file.seek(state["bytes"])
        return None if state is None else state["state"]

    def _read_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        try:
            state = json.loads(self.state_path.read_text())
            if not {"fingerprint", "bytes", "state"} <= set(state):
                raise ValueError("missing keys")
        except ValueError as e:
            raise UserError(f"{self.state_path}: unreadable ({e}); delete it and {self.partial} to start over"
                            ) from None
        return state

    def commit(self, lines: list[str], state: dict) -> None:
        """Appends `lines` (each ending in a newline) and makes them durable, then records `state` with the
        file's new length: a kill at any point leaves the last commit whole."""
        f = self._file
        f.write("".join(lines).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
        doc = {"fingerprint": self.fingerprint, "bytes": f.tell(), "state": state}
        atomic_write(self.state_path, json.dumps(doc) + "\n")
        self.commits += 1
        kill_after = os.environ.get(KILL_ENV)
        if kill_after and self.commits >= int(kill_after):  # the one test hook: die as kill -9 would
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    def rows(self) -> Any:
        """The rows already committed (JSON objects), read back one line at a time (for the caller's totals)."""
        with open(self.partial, "rb") as f:
            for line in f:
                yield json.loads(line)

    def finish(self) -> None:
        """Closes the partial file and gives it its final name; removes the state file."""
        self._file.close()
        if isinstance(self.out, UrlPath):
            self.out.fs.put_file(str(self.partial), self.out.key)
            self.partial.unlink()
        else:
            os.replace(self.partial, self.out)
        self.state_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Closes the partial file without finishing (an error: what was committed stays for a rerun)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
            if not self.resumed and not self.commits:  # nothing worth keeping: leave no partial file behind
                self.partial.unlink(missing_ok=True)


def folder_fingerprint(path: str) -> dict:
    """A local model folder's config and weight files by size and mtime (a URL or hub name as given)."""
    if not os.path.isdir(path):
        return {"path": path}
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(Path(path).iterdir())
            if f.is_file() and (f.suffix in (".safetensors", ".json", ".bin", ".msgpack"))}
