"""Demonstration records: the readers (JSONL, JSON array, Parquet/CSV, `hf:`), dispatching to each schema's parser.

    records, report = load_records(path)    # schema auto-detected from the first record's keys

Schemas (optional `id` and `category` in every one; other keys are ignored; the names, `Record`, `LoadReport`
and `DataError` live in `schema.py`):

| schema              | keys                                          | scored tokens (response mask)      |
|---------------------|-----------------------------------------------|------------------------------------|
| `dolly`             | `instruction`, `context` (optional), `response` | response + EOS                    |
| `chat`              | `messages: [{role, content}]`, roles system/user/assistant | every assistant turn + its EOS |
| `prompt_completion` | `prompt`, `completion` (strings, or TRL message lists) | completion + EOS           |
| `text`              | `text`                                        | every token                        |
| `tokens`            | `input_ids`, `prompt_length` (optional, 0)    | token j when j >= prompt_length    |
| `alpaca`, `sharegpt` | see `formats.py`                             | every assistant turn + its EOS     |
| `tree`              | one message per row, parent ids; see `trees.py` | every assistant turn + its EOS   |

Parquet, CSV and hub data sets are read through `datasets` (`tables.py`); `fields` renames a file's
columns onto these keys first (`formats.FieldMap`).

Bad input raises `DataError` ("FILE:LINE: FIELD: problem"), or with `skip_bad=True` becomes a
counted skip listed in the `LoadReport`.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from mbc_jax import UserError, paths
from mbc_jax.data import formats, tables, trees
from mbc_jax.data.schema import ROLES, SCHEMAS, DataError, LoadReport, Record, get_str, json_type_name

# auto-detection: the first schema whose key appears in the record wins (in this order)
_DETECT_KEYS = (
    ("messages", "chat"),
    ("input_ids", "tokens"),
    ("instruction", "dolly"),
    ("prompt", "prompt_completion"),
    ("completion", "prompt_completion"),
    ("text", "text"),
)


def _list_schemas() -> str:
    return "; ".join(f"{k} ({v})" for k, v in SCHEMAS.items())


def _get_int(v: Any, source: str, key: str) -> int:
    if type(v) is not int:
        raise DataError(source, key, f"expected an integer, got {json_type_name(v)} ({json.dumps(v)[:40]})")
    return v


def _parse_record(obj: Any, schema: str, index: int, source: str) -> Record:
    if not isinstance(obj, dict):
        raise DataError(source, "record", f"expected a JSON object, got {json_type_name(obj)}")
    rid = obj.get("id")
    if rid is None:
        rid = str(index)
    elif isinstance(rid, (str, int)) and not isinstance(rid, bool):
        rid = str(rid)
    else:
        raise DataError(source, "id", f"expected a string or integer, got {json_type_name(rid)}")
    category = get_str(obj, "category", source, required=False)
    rec = Record(index=index, id=rid, category=category, turns=[], source=source, schema=schema)
    if schema in formats.PARSERS:
        formats.PARSERS[schema](obj, rec, source)
    elif schema == "prompt_completion" and formats.is_conversational(obj):
        formats.parse_conversational(obj, rec, source)
    elif schema == "dolly":
        instruction = get_str(obj, "instruction", source)
        rec.context = get_str(obj, "context", source, required=False)
        response = get_str(obj, "response", source, nonempty=True)
        rec.turns = [("user", instruction), ("assistant", response)]
    elif schema == "prompt_completion":
        prompt = get_str(obj, "prompt", source)
        completion = get_str(obj, "completion", source, nonempty=True)
        rec.turns = [("user", prompt), ("assistant", completion)]
    elif schema == "chat":
        msgs = obj.get("messages")
        if msgs is None:
            raise DataError(source, "messages", "missing")
        if not isinstance(msgs, list):
            raise DataError(source, "messages", f"expected an array, got {json_type_name(msgs)}")
        if not msgs:
            raise DataError(source, "messages", "empty")
        for k, m in enumerate(msgs):
            where = f"messages[{k}]"
            if not isinstance(m, dict):
                raise DataError(source, where, f"expected an object with role and content, got {json_type_name(m)}")
            role = m.get("role")
            if role is None:
                raise DataError(source, f"{where}.role", "missing")
            if not isinstance(role, str) or role not in ROLES:
                raise DataError(source, f"{where}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
            if role == "system" and k != 0:
                raise DataError(source, f"{where}.role", "a system message must come first")
            content = formats.message_text(m, "content", where, source)
            formats.check_weight(m, role, where, source)
            if role == "assistant" and not content.strip():
                raise DataError(source, f"{where}.content", "empty assistant message")
            rec.turns.append((role, content))
        if not any(r == "assistant" for r, _ in rec.turns):
            raise DataError(source, "messages", "no assistant message (nothing to score as response)")
    elif schema == "text":
        rec.text = get_str(obj, "text", source, nonempty=True)
    elif schema == "tokens":
        ids = obj.get("input_ids")
        if ids is None:
            raise DataError(source, "input_ids", "missing")
        if not isinstance(ids, list):
            raise DataError(source, "input_ids", f"expected an array of integers, got {json_type_name(ids)}")
        if not ids:
            raise DataError(source, "input_ids", "empty")
        if not set(map(type, ids)) <= {int}:
            j = next(j for j, v in enumerate(ids) if type(v) is not int)
            _get_int(ids[j], source, f"input_ids[{j}]")
        j = next((j for j, v in enumerate(ids) if not 0 <= v < 2**31), None)
        if j is not None:
            raise DataError(source, f"input_ids[{j}]", f"token id {ids[j]} out of range (must be >= 0)")
        pl = obj.get("prompt_length")
        pl = 0 if pl is None else _get_int(pl, source, "prompt_length")
        if pl < 0:
            raise DataError(source, "prompt_length", f"negative ({pl})")
        if pl > len(ids):
            raise DataError(source, "prompt_length", f"{pl} exceeds the record's {len(ids)} tokens")
        rec.input_ids, rec.prompt_length = ids, pl
    else:  # pragma: no cover - guarded by load_records
        raise UserError(f"unknown schema {schema!r}; known schemas: {_list_schemas()}")
    return rec


def _detect_schema(obj: Any) -> str | None:
    found = formats.detect(obj)
    if found is not None:
        return found
    if isinstance(obj, dict):
        for key, schema in _DETECT_KEYS:
            if key in obj:
                return schema
    return None


_Item = tuple[str, Any, "DataError | None"]  # (source, parsed object, error while reading it)


def _check_file(path: str) -> None:
    if paths.is_url(path):  # gs://, s3://, any fsspec URL (mbc_jax/paths.py)
        p = paths.as_path(path)
        exists, is_dir = p.exists(), p.is_dir()
    else:
        exists, is_dir = os.path.exists(path), os.path.isdir(path)
    if not exists:
        raise UserError(f"{path}: no such file")
    if is_dir:
        raise UserError(f"{path}: is a directory, expected a JSONL, JSON, Parquet or CSV file")


def _read_bytes(path: str) -> bytes:
    _check_file(path)
    if paths.is_url(path):
        data = paths.as_path(path).read_bytes()
        return gzip.decompress(data) if path.endswith(".gz") else data
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _iter_jsonl(path: str, lines: Iterable[bytes], report: LoadReport) -> Iterator[_Item]:
    for lineno, raw in enumerate(lines, start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            report.blank_lines += 1
            continue
        source = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield source, None, DataError(source, "record",
                                          f"invalid UTF-8 at byte {e.start + 1} of the line ({e.reason})")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield source, None, DataError(source, "record", f"malformed JSON at column {e.colno}: {e.msg} "
                                              "(JSONL needs one whole JSON object per line)")
            continue
        yield source, obj, None


def _iter_json_array(path: str, data: bytes) -> Iterator[_Item]:
    """Elements of a JSON array file, each with the line it starts on."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}", "file",
                        f"invalid UTF-8 ({e.reason}); a JSON array file must be valid UTF-8 throughout") from None
    dec = json.JSONDecoder()
    n = len(text)
    ws = " \t\r\n"

    def skip(p: int) -> int:
        while p < n and text[p] in ws:
            p += 1
        return p

    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    pos = skip(text.index("[") + 1)
    if pos < n and text[pos] == "]":
        return
    while True:
        source = f"{path}:{line_at(pos)}"
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}", "record", f"malformed JSON at column {e.colno}: {e.msg} "
                            "(a broken JSON array cannot be skipped; fix it or use JSONL)") from None
        yield source, obj, None
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < n and text[pos] == "]":
            if skip(pos + 1) < n:
                raise DataError(f"{path}:{line_at(skip(pos + 1))}", "file", "extra data after the closing ']'")
            return
        raise DataError(f"{path}:{line_at(min(pos, n))}", "file", "malformed JSON array: expected ',' or ']'")


# TRL concatenates a plain-string prompt and completion as they stand; here they are a user turn and an
# assistant turn, rendered with the run's template like every other schema (one format for training,
# scoring and generation). The load summary says so.
PLAIN_PROMPT_COMPLETION = ("NOTE: {n} plain-string prompt/completion record(s) are rendered with the template (by "
                           "default `Human: {{prompt}}\n\nAssistant: {{completion}}` + EOS), not concatenated as "
                           "TRL does; for TRL's text pass --template FILE with "
                           '{{"user_prefix": "", "assistant_prefix": "", "response_prefix": ""}}')


def _note_plain(report: LoadReport, plain: int) -> None:
    if plain:
        report.counts["plain_prompt_completion"] = plain
        report.notes.append(PLAIN_PROMPT_COMPLETION.format(n=plain))


def _raw_lines(path: str) -> Iterator[bytes]:
    """The file's lines split at b"\\n" without it, read as a stream (`.gz` too), as `bytes.split(b"\\n")` gives
    them: a file that ends in a newline (or is empty) ends with one empty line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        last = b"\n"
        for raw in f:
            last = raw
            yield raw[:-1] if raw.endswith(b"\n") else raw
        if last.endswith(b"\n"):
            yield b""


def _first_bytes(path: str) -> bytes:
    """The file's first non-blank bytes (BOM and whitespace left out), b"" for a blank file; read as a stream."""
    opener = gzip.open if path.endswith(".gz") else open
    head = b""
    with opener(path, "rb") as f:
        while block := f.read(1 << 16):
            head = (head + block).lstrip(b"\xef\xbb\xbf \t\r\n")
            if head:
                return head[:1]
    return b""


def _open_items(path: str, schema: str) -> tuple[LoadReport, Iterable[_Item]]:
    """The report and the raw items of `path`: a local JSONL file is read line by line (memory does not grow
    with the file), a JSON array, a URL, a table or a hub data set as a whole."""
    kind = tables.TABLE_SUFFIXES.get(os.path.splitext(path)[1].lower())
    if path.startswith("hf:"):
        return LoadReport(path=path, schema=schema, format="hf"), tables.iter_hub(path)
    if kind is not None:
        _check_file(path)
        report = LoadReport(path=path, schema=schema, format=kind)
        if paths.is_url(path):  # read from a local copy; every line still names the URL
            local = str(paths.fetch(path))
            return report, ((src.replace(local, path, 1), obj, err) for src, obj, err in tables.iter_table(local, kind))
        return report, tables.iter_table(path, kind)
    _check_file(path)
    local = not paths.is_url(path)
    data = None if local else _read_bytes(path)
    head = _first_bytes(path) if local else data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if not head:
        raise DataError(f"{path}:1", "file", "empty file: no records")
    is_array = head == b"["
    report = LoadReport(path=path, schema=schema, format="json" if is_array else "jsonl")
    if is_array:
        return report, _iter_json_array(path, _read_bytes(path) if data is None else data)
    return report, _iter_jsonl(path, _raw_lines(path) if data is None else data.split(b"\n"), report)


def load_records(
    path: str | os.PathLike, schema: str = "auto", skip_bad: bool = False, *, fields: str | dict | None = None,
    tree: str = "best", tree_filter: str | None = None,
) -> tuple[list[Record], LoadReport]:
    """Read demonstration records from a JSONL file, a JSON array file (`.gz` too), a Parquet/CSV/TSV file
    or `hf:NAME[:CONFIG][@REVISION][:SPLIT]`.

    The schema is detected from the first JSON object's keys unless given; `fields` renames columns first
    (`formats.FieldMap`); `tree` / `tree_filter` expand conversation trees (`trees.py`). Every record gets
    `index` = its 0-based position among all records in the input (skipped ones included; for trees, among
    the dialogues). Bad records raise `DataError`, or with `skip_bad` are skipped and listed in the report
    (a malformed JSON *array* file, an empty file and an unknown schema override always raise).
    """
    report, records = iter_records(path, schema, skip_bad, fields=fields, tree=tree, tree_filter=tree_filter)
    return list(records), report


def iter_records(
    path: str | os.PathLike, schema: str = "auto", skip_bad: bool = False, *, fields: str | dict | None = None,
    tree: str = "best", tree_filter: str | None = None,
) -> tuple[LoadReport, Iterator[Record]]:
    """`load_records` as a stream: (the report, filled in as the records are read, and an iterator of the
    records). A local JSONL file is never held whole, so memory does not grow with its length; the checks
    `load_records` makes at the end of the input (no records at all) raise when the iterator is exhausted."""
    path = str(path)
    if schema != "auto" and schema not in SCHEMAS:
        raise UserError(f"unknown schema {schema!r}; known schemas: {', '.join(SCHEMAS)} (or auto)")
    fmap = formats.FieldMap.parse(fields)
    report, items = _open_items(path, schema)
    if fmap is not None:
        items = fmap.items(items)
    fix = fmap.translate if fmap is not None else (lambda e: e)
    return report, _records(path, iter(items), report, schema, skip_bad, fix, tree, tree_filter)


def _records(path: str, items: Iterator[_Item], report: LoadReport, schema: str, skip_bad: bool, fix: Any,
             tree: str, tree_filter: str | None) -> Iterator[Record]:
    chosen, plain, loaded = (None if schema == "auto" else schema), 0, 0  # plain: plain-string prompt/completion
    for index, (source, obj, err) in enumerate(items):
        report.records_read += 1
        try:
            if err is not None:
                raise err
            if chosen is None:
                chosen = _detect_schema(obj)
                if chosen is None:
                    keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else json_type_name(obj)
                    raise DataError(source, "record", f"unknown schema: keys [{keys}] match none of the known "
                                    f"schemas: {_list_schemas()}; pass the schema explicitly if it is one of these, "
                                    "or map the columns with --fields (e.g. instruction=question,response=answer)")
                report.schema = chosen
            if chosen == "tree":  # the whole input at once: a dialogue is a path through many rows
                report.records_read -= 1
                items = itertools.chain([(source, obj, err)], items)
                break
            rec = _parse_record(obj, chosen, index, source)
            plain += chosen == "prompt_completion" and not formats.is_conversational(obj)
        except DataError as e:
            e = fix(e)
            if not skip_bad:
                raise e from None
            report.skipped.append((source, str(e)))
            continue
        loaded += 1
        report.records_loaded = loaded
        yield rec
    if chosen == "tree":
        dialogues = trees.build_records(items, report, mode=tree, tree_filter=tree_filter, skip_bad=skip_bad, fix=fix)
        loaded = report.records_loaded = len(dialogues)
        yield from dialogues
    _note_plain(report, plain)
    _check_loaded(path, report, loaded)


def _check_loaded(path: str, report: LoadReport, loaded: int) -> None:
    if report.records_read == 0:
        raise DataError(f"{path}:1", "file",
                        "no records (empty JSON array)" if report.format != "jsonl" else "empty file: no records")
    if not loaded:
        if not report.skipped:
            raise UserError(f"{path}: no records: {'; '.join(report.notes) or 'nothing to read'}")
        raise UserError(f"{path}: all {report.records_read} records are bad; nothing to load. First problem: "
                        f"{report.skipped[0][1]}")
