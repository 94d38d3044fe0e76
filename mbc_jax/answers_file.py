"""The answers file: the one writer and the one reader of its format.

    write_answers(path, answers.rows, meta)   # `mbc-jax select`'s per-step answers, `table1_entropy`, ...
    for lineno, row in read_answer_lines(path): ...

    part = partial_answers(path, fingerprint)  # `mbc-jax generate`: a chunk at a time, resumable (`mbc_jax.partial`)
    part.commit(answer_lines(rows), state)     # ... per chunk; then
    finish_answers(part, meta)                 # ANSWERS.partial -> ANSWERS, then the meta file

`ANSWERS.jsonl` holds one JSON object per answered record (the rows of `generate.answer_records`), UTF-8
as it stands; `ANSWERS.meta.json` (the file's stem + `.meta.json`) holds the settings that produced them,
as indented JSON. Both are written atomically (`paths.atomic_write`), the answers of a streamed run by the
rename of its finished partial file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from mbc_jax import UserError
from mbc_jax.partial import PartialOutput
from mbc_jax.paths import atomic_write, write_jsonl


def meta_path(path: str | os.PathLike) -> Path:
    """Where the settings of the answers file `path` go: its stem + `.meta.json`."""
    path = Path(path)
    return path.with_name(path.stem + ".meta.json")


def write_answers(path: str | os.PathLike, rows: Iterable[dict], meta: dict | None = None) -> int:
    """Write the answer rows to `path`, then `meta` beside it (without `meta`, an earlier one there is removed);
    returns the number of rows."""
    n = write_jsonl(path, rows)
    if meta is not None:
        atomic_write(meta_path(path), json.dumps(meta, indent=2) + "\n")
    elif meta_path(path).is_file():  # a stale one from an earlier write would describe other answers
        meta_path(path).unlink()
    return n


def answer_lines(rows: Iterable[dict]) -> list[str]:
    """The lines of `rows` exactly as `write_answers` writes them (UTF-8 as it stands, one object a line)."""
    return [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]


def partial_answers(path: str | os.PathLike, fingerprint: dict) -> PartialOutput:
    """The answers file `path` written a chunk at a time: `path`.partial plus its state file, resumed by a rerun
    with the same `fingerprint` (`mbc_jax.partial.PartialOutput`); commit `answer_lines`, then `finish_answers`."""
    return PartialOutput(str(path), fingerprint)


def finish_answers(part: PartialOutput, meta: dict) -> None:
    """Gives the complete partial file its name, then writes `meta` beside it."""
    part.finish()
    atomic_write(meta_path(part.out), json.dumps(meta, indent=2) + "\n")


def read_meta(path: str | os.PathLike) -> dict | None:
    """The settings written beside the answers file `path`, or None when there are none."""
    meta = meta_path(path)
    return json.loads(meta.read_text()) if meta.is_file() else None


def read_answer_lines(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, row) for every non-blank line of an answers file; a line that is not a JSON object is an
    error naming it. What the rows must hold is the reader's to check (`judge.read_answers`)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read answer file ({e.strerror})") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); answer files are JSONL "
                            "written by `mbc-jax generate`") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append((lineno, row))
    return rows


def answer_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of an answers file (`read_answer_lines` without the line numbers)."""
    return [row for _, row in read_answer_lines(path)]
