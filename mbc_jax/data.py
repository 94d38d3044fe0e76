"""Demonstration data: read records, render them with one dialogue template, tokenize, batch.

    records = load_records(path)            # JSONL / JSON array / hf:NAME, schema auto-detected
    examples = tokenize(records, tokenizer)  # token ids + response mask, truncated to max_length
    batches = pack(examples, seq_len, rows)  # several records per row, segment ids, fixed shapes

Schemas (optional `id` and `category` in every one; other keys are ignored):

| schema              | keys                                          | scored tokens (response mask)      |
|---------------------|-----------------------------------------------|------------------------------------|
| `dolly`             | `instruction`, `context` (optional), `response` | response + EOS                    |
| `chat`              | `messages: [{role, content}]`, roles system/user/assistant | every assistant turn + its EOS |
| `prompt_completion` | `prompt`, `completion`                        | completion + EOS                   |
| `text`              | `text`                                        | every token                        |
| `tokens`            | `input_ids`, `prompt_length` (optional, 0)    | token j when j >= prompt_length    |

`response_mask[j]` is about token j: the target predicted at position j - 1 is a response target
iff `response_mask[j]`. Library functions never print; they return reports with `summary()`.
Bad input raises `DataError` ("FILE:LINE: FIELD: problem"), or with `skip_bad=True` becomes a
counted skip listed in the report.
"""

from __future__ import annotations

import bisect
import dataclasses
import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbc_jax import UserError

SCHEMAS: dict[str, str] = {
    "dolly": "instruction, context (optional), response",
    "chat": "messages: [{role, content}]",
    "prompt_completion": "prompt, completion",
    "text": "text",
    "tokens": "input_ids, prompt_length (optional)",
}
# auto-detection: the first schema whose key appears in the record wins (in this order)
_DETECT_KEYS = (
    ("messages", "chat"),
    ("input_ids", "tokens"),
    ("instruction", "dolly"),
    ("prompt", "prompt_completion"),
    ("completion", "prompt_completion"),
    ("text", "text"),
)
ROLES = ("system", "user", "assistant")
OVERFLOW_POLICIES = ("truncate", "drop", "error")


class DataError(UserError):
    """Bad input data: `str(e)` is "SOURCE: FIELD: problem", SOURCE being "FILE:LINE"."""

    def __init__(self, source: str, field: str | None = None, problem: str | None = None):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(source if field is None else f"{source}: {field}: {problem}")


def _list_schemas() -> str:
    return "; ".join(f"{k} ({v})" for k, v in SCHEMAS.items())


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One raw demonstration as parsed.

    `turns` holds (role, text) for the dialogue schemas: Dolly and prompt/completion become
    [("user", prompt), ("assistant", response)]. Dolly's `context` is kept apart in `context` and
    joined to the first user turn by the template (`Template.context_separator`), so the format
    lives in one place; use `Template.prompt(record)` for the rendered prompt text.
    """

    index: int
    id: str
    category: str
    turns: list[tuple[str, str]]
    text: str | None = None
    input_ids: list[int] | None = None
    prompt_length: int | None = None
    source: str = ""
    schema: str = ""
    context: str = ""

    def content_key(self) -> str:
        """Canonical text of what the model sees (id, category, index and source left out)."""
        return json.dumps(
            [self.schema, self.turns, self.context, self.text, self.input_ids, self.prompt_length],
            ensure_ascii=False, separators=(",", ":"),
        )


@dataclass
class LoadReport:
    path: str
    schema: str
    format: str  # "jsonl", "json" (array) or "hf"
    records_read: int = 0  # every record seen, including skipped ones
    records_loaded: int = 0
    blank_lines: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, message)

    def summary(self, max_listed: int = 20) -> str:
        s = (f"{self.path}: loaded {self.records_loaded} of {self.records_read} records "
             f"(schema {self.schema}, {self.format})")
        if self.skipped:
            s += f"; skipped {len(self.skipped)} bad record(s):"
            s += "".join(f"\n  {msg}" for _, msg in self.skipped[:max_listed])
            if len(self.skipped) > max_listed:
                s += f"\n  ... and {len(self.skipped) - max_listed} more"
        return s


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def _get_str(obj: dict, key: str, source: str, *, required: bool = True, nonempty: bool = False,
             default: str = "") -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(source, key, "missing")
        return default
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(source, key, f"expected a string, got {_type_name(v)} ({json.dumps(v)[:40]})")
    if nonempty and not v.strip():
        raise DataError(source, key, "empty")
    return v


def _get_int(v: Any, source: str, key: str) -> int:
    if type(v) is not int:
        raise DataError(source, key, f"expected an integer, got {_type_name(v)} ({json.dumps(v)[:40]})")
    return v


def _parse_record(obj: Any, schema: str, index: int, source: str) -> Record:
    if not isinstance(obj, dict):
        raise DataError(source, "record", f"expected a JSON object, got {_type_name(obj)}")
    rid = obj.get("id")
    if rid is None:
        rid = str(index)
    elif isinstance(rid, (str, int)) and not isinstance(rid, bool):
        rid = str(rid)
    else:
        raise DataError(source, "id", f"expected a string or integer, got {_type_name(rid)}")
    category = _get_str(obj, "category", source, required=False)
    rec = Record(index=index, id=rid, category=category, turns=[], source=source, schema=schema)
    if schema == "dolly":
        instruction = _get_str(obj, "instruction", source)
        rec.context = _get_str(obj, "context", source, required=False)
        response = _get_str(obj, "response", source, nonempty=True)
        rec.turns = [("user", instruction), ("assistant", response)]
    elif schema == "prompt_completion":
        prompt = _get_str(obj, "prompt", source)
        completion = _get_str(obj, "completion", source, nonempty=True)
        rec.turns = [("user", prompt), ("assistant", completion)]
    elif schema == "chat":
        msgs = obj.get("messages")
        if msgs is None:
            raise DataError(source, "messages", "missing")
        if not isinstance(msgs, list):
            raise DataError(source, "messages", f"expected an array, got {_type_name(msgs)}")
        if not msgs:
            raise DataError(source, "messages", "empty")
        for k, m in enumerate(msgs):
            where = f"messages[{k}]"
            if not isinstance(m, dict):
                raise DataError(source, where, f"expected an object with role and content, got {_type_name(m)}")
            role = m.get("role")
            if role is None:
                raise DataError(source, f"{where}.role", "missing")
            if not isinstance(role, str) or role not in ROLES:
                raise DataError(source, f"{where}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
            if role == "system" and k != 0:
                raise DataError(source, f"{where}.role", "a system message must come first")
            if "content" not in m or m["content"] is None:
                raise DataError(source, f"{where}.content", "missing")
            content = m["content"]
            if not isinstance(content, str):
                raise DataError(source, f"{where}.content", f"expected a string, got {_type_name(content)}")
            if role == "assistant" and not content.strip():
                raise DataError(source, f"{where}.content", "empty assistant message")
            rec.turns.append((role, content))
        if not any(r == "assistant" for r, _ in rec.turns):
            raise DataError(source, "messages", "no assistant message (nothing to score as response)")
    elif schema == "text":
        rec.text = _get_str(obj, "text", source, nonempty=True)
    elif schema == "tokens":
        ids = obj.get("input_ids")
        if ids is None:
            raise DataError(source, "input_ids", "missing")
        if not isinstance(ids, list):
            raise DataError(source, "input_ids", f"expected an array of integers, got {_type_name(ids)}")
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
    if isinstance(obj, dict):
        for key, schema in _DETECT_KEYS:
            if key in obj:
                return schema
    return None


_Item = tuple[str, Any, "DataError | None"]  # (source, parsed object, error while reading it)


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a JSONL or JSON file")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _iter_jsonl(path: str, data: bytes, report: LoadReport) -> Iterator[_Item]:
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            report.blank_lines += 1
            continue
        source = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield source, None, DataError(source, "record", f"invalid UTF-8 at byte {e.start + 1} of the line ({e.reason})")
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
        raise DataError(f"{path}:{line}", "file", f"invalid UTF-8 ({e.reason}); a JSON array file must be valid UTF-8 throughout")
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
                            "(a broken JSON array cannot be skipped; fix it or use JSONL)")
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


def _iter_hf(spec: str) -> Iterator[_Item]:
    name, _, split = spec[len("hf:"):].partition(":")
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(f"{spec}: loading a Hugging Face hub data set needs the `datasets` library: "
                        "pip install datasets (or download the data set to a JSONL file and pass its path)") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # network, unknown name, ...: all actionable by the user
        raise UserError(f"{spec}: could not load {name!r} from the hub ({type(e).__name__}: {e}); check the name "
                        "and your network, or download it to a JSONL file and pass its path") from None
    for i, row in enumerate(ds):
        yield f"{spec}:{i + 1}", dict(row), None


def load_records(path: str | os.PathLike, schema: str = "auto", skip_bad: bool = False) -> tuple[list[Record], LoadReport]:
    """Read demonstration records from a JSONL file, a JSON array file (`.gz` too) or `hf:NAME[:SPLIT]`.

    The schema is detected from the first JSON object's keys unless given. Every record gets
    `index` = its 0-based position among all records in the input (skipped ones included).
    Bad records raise `DataError`, or with `skip_bad` are skipped and listed in the report
    (a malformed JSON *array* file, an empty file and an unknown schema override always raise).
    """
    path = str(path)
    if schema != "auto" and schema not in SCHEMAS:
        raise UserError(f"unknown schema {schema!r}; known schemas: {', '.join(SCHEMAS)} (or auto)")
    if path.startswith("hf:"):
        report = LoadReport(path=path, schema=schema, format="hf")
        items: Iterable[_Item] = _iter_hf(path)
    else:
        data = _read_bytes(path)
        if not data.strip() or data.strip() == b"\xef\xbb\xbf":
            raise DataError(f"{path}:1", "file", "empty file: no records")
        is_array = data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
        report = LoadReport(path=path, schema=schema, format="json" if is_array else "jsonl")
        items = _iter_json_array(path, data) if is_array else _iter_jsonl(path, data, report)

    records: list[Record] = []
    chosen = None if schema == "auto" else schema
    for index, (source, obj, err) in enumerate(items):
        report.records_read += 1
        try:
            if err is not None:
                raise err
            if chosen is None:
                chosen = _detect_schema(obj)
                if chosen is None:
                    keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else _type_name(obj)
                    raise DataError(source, "record", f"unknown schema: keys [{keys}] match none of the known "
                                    f"schemas: {_list_schemas()}; pass the schema explicitly if it is one of these")
                report.schema = chosen
            records.append(_parse_record(obj, chosen, index, source))
        except DataError as e:
            if not skip_bad:
                raise
            report.skipped.append((source, str(e)))
    report.records_loaded = len(records)
    if report.records_read == 0:
        raise DataError(f"{path}:1", "file", "no records (empty JSON array)" if report.format != "jsonl" else "empty file: no records")
    if not records:
        raise UserError(f"{path}: all {report.records_read} records are bad; nothing to load. First problem: "
                        f"{report.skipped[0][1]}")
    return records, report


# ----------------------------------------------------------------------------------------------
# Template and tokenization
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """The one place for the dialogue format (default: the paper's single-turn dialogue).

    A dialogue renders as text segments; prompt segments are not scored, response segments are:

        [system + turn_separator] user_prefix + user (+ context_separator + context)
        + assistant_prefix | response_prefix + response | EOS
        [+ turn_separator + user_prefix + user2 + assistant_prefix | response_prefix + response2 | EOS ...]

    i.e. "Human: {instruction}[\\n\\n{context}]\\n\\nAssistant:" | " {response}" | <eos>.
    Segments are encoded separately: the first with the tokenizer's default special tokens
    (OPT's `</s>`), the rest without; an EOS id follows each response when `add_eos`.
    """

    system_prefix: str = ""
    user_prefix: str = "Human: "
    assistant_prefix: str = "\n\nAssistant:"
    response_prefix: str = " "
    turn_separator: str = "\n\n"
    context_separator: str = "\n\n"
    add_eos: bool = True
    eos_token_id: int | None = None  # None: the tokenizer's eos_token_id

    @classmethod
    def from_dict(cls, d: dict, source: str = "template") -> Template:
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a mapping of template fields, got {_type_name(d)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k, v in d.items():
            if k not in fields:
                raise UserError(f"{source}: {k}: unknown template field; known fields: {', '.join(fields)}")
            if k == "add_eos" and not isinstance(v, bool):
                raise UserError(f"{source}: {k}: expected true or false, got {v!r}")
            if k == "eos_token_id" and v is not None and type(v) is not int:
                raise UserError(f"{source}: {k}: expected an integer or null, got {v!r}")
            if k not in ("add_eos", "eos_token_id") and not isinstance(v, str):
                raise UserError(f"{source}: {k}: expected a string, got {v!r}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Template:
        """Load from a JSON or YAML file holding any subset of the fields (the rest keep defaults)."""
        path = str(path)
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such template file")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            if path.endswith((".yaml", ".yml")):
                import yaml

                d = yaml.safe_load(text) or {}
            else:
                d = json.loads(text)
        except Exception as e:
            raise UserError(f"{path}: cannot parse template ({type(e).__name__}: {e})") from None
        return cls.from_dict(d, path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def segments(self, record: Record) -> list[tuple[str, bool]]:
        """(text, is_response) segments of a dialogue record; an EOS token follows each response."""
        if record.schema in ("text", "tokens") or not record.turns:
            raise ValueError(f"{record.source}: a {record.schema or 'non-dialogue'} record has no dialogue to render")
        segs: list[tuple[str, bool]] = []
        buf, prev, first_user = "", None, True
        for role, content in record.turns:
            if role == "system":
                buf += self.system_prefix + content + self.turn_separator
            elif role == "user":
                if first_user and record.context:
                    content = content + self.context_separator + record.context
                first_user = False
                if prev in ("user", "assistant"):
                    buf += self.turn_separator
                buf += self.user_prefix + content
            else:  # assistant
                segs.append((buf + self.assistant_prefix, False))
                segs.append((self.response_prefix + content, True))
                buf = ""
            prev = role
        if buf:
            segs.append((buf, False))
        return segs

    def prompt(self, record: Record) -> str:
        """The text before the last response (what a model is asked to continue when generating)."""
        segs = self.segments(record)
        last = max(i for i, (_, r) in enumerate(segs) if r)
        return "".join(t for t, _ in segs[:last])


@dataclass
class Example:
    """One tokenized record. Target j (predicted at position j - 1) is a response target iff response_mask[j]."""

    index: int
    id: str
    category: str
    input_ids: np.ndarray  # int32 [n]
    response_mask: np.ndarray  # bool [n]
    truncated: bool = False
    source: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_tokens(self) -> int:
        return int(self.response_mask.sum())


@dataclass
class TokenizeReport:
    max_length: int
    overflow: str
    records_in: int = 0
    examples_out: int = 0
    tokens: int = 0  # after truncation
    response_tokens: int = 0
    truncated: list[tuple[int, str, int]] = field(default_factory=list)  # (index, id, length before)
    dropped: list[tuple[int, str, int]] = field(default_factory=list)  # (index, id, length)
    no_response: list[tuple[int, str]] = field(default_factory=list)  # kept, but no response token left
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, message) with skip_bad
    longest: int = 0  # longest record before truncation

    def summary(self, max_listed: int = 10) -> str:
        s = (f"tokenized {self.examples_out} of {self.records_in} records: {self.tokens} tokens "
             f"({self.response_tokens} response), longest record {self.longest} tokens, max_length {self.max_length}")

        def ids(xs: list) -> str:
            shown = ", ".join(str(x[1]) for x in xs[:max_listed])
            return shown + (f", ... (+{len(xs) - max_listed})" if len(xs) > max_listed else "")

        if self.truncated:
            s += f"\n  truncated to {self.max_length}: {len(self.truncated)} (ids {ids(self.truncated)})"
        if self.no_response:
            s += f"\n  no response token left (response metrics undefined): {len(self.no_response)} (ids {ids(self.no_response)})"
        if self.dropped:
            s += f"\n  dropped, longer than {self.max_length}: {len(self.dropped)} (ids {ids(self.dropped)})"
        if self.skipped:
            s += f"\n  skipped bad records: {len(self.skipped)}" + "".join(f"\n    {m}" for _, m in self.skipped[:max_listed])
        return s


def _encode(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    try:
        out = tokenizer(texts, add_special_tokens=add_special_tokens, verbose=False)
    except TypeError:  # tokenizer-like objects without `verbose`
        out = tokenizer(texts, add_special_tokens=add_special_tokens)
    return [list(x) for x in out["input_ids"]]


def tokenize(
    records: Sequence[Record],
    tokenizer: Any = None,
    template: Template | None = None,
    max_length: int = 512,
    overflow: str = "truncate",
    *,
    skip_bad: bool = False,
    vocab_size: int | None = None,
) -> tuple[list[Example], TokenizeReport]:
    """Tokenize records with the template; truncate or drop those longer than `max_length`.

    overflow: "truncate" (default) keeps the first max_length tokens; a record whose response is
    cut away entirely is kept (its full-dialogue metrics stay defined) and listed in
    `report.no_response`. "drop" drops over-long records (listed in `report.dropped`). "error"
    raises DataError for them (with skip_bad: a counted skip). `tokenizer` is a Hugging Face
    tokenizer (callable on a list of strings, with `eos_token_id`); it may be None when every
    record is pre-tokenized. Pre-tokenized ids must be < vocab_size (default len(tokenizer)).
    """
    template = template or Template()
    if overflow not in OVERFLOW_POLICIES:
        raise UserError(f"unknown overflow policy {overflow!r}; expected one of {', '.join(OVERFLOW_POLICIES)}")
    if max_length < 1:
        raise UserError(f"max_length must be >= 1, got {max_length}")
    if vocab_size is None and tokenizer is not None:
        vocab_size = len(tokenizer)
    report = TokenizeReport(max_length=max_length, overflow=overflow, records_in=len(records))

    # 1. render every record into (text, is_response, with_special_tokens) pieces; encode in two batches
    plans: list[list[tuple[int, int, bool]] | None] = []  # per record: (which batch, position, is_response)
    batches: tuple[list[str], list[str]] = ([], [])  # without / with special tokens
    needs_eos = False
    for rec in records:
        if rec.schema == "tokens" or rec.input_ids is not None:
            plans.append(None)
            continue
        if tokenizer is None:
            raise UserError(f"{rec.source}: a tokenizer is needed for {rec.schema or 'text'} records")
        if rec.text is not None:
            pieces = [(rec.text, True)]
        else:
            pieces = template.segments(rec)
            needs_eos = needs_eos or template.add_eos
        plan = []
        for k, (text, is_resp) in enumerate(pieces):
            b = 1 if k == 0 else 0
            plan.append((b, len(batches[b]), is_resp))
            batches[b].append(text)
        plans.append(plan)
    eos = template.eos_token_id if template.eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if needs_eos and eos is None:
        raise UserError("the tokenizer has no eos_token_id: set eos_token_id in the template, or add_eos: false")
    encoded = (_encode(tokenizer, batches[0], False), _encode(tokenizer, batches[1], True))

    # 2. assemble, validate, truncate
    examples: list[Example] = []
    for rec, plan in zip(records, plans):
        if plan is None:
            ids = np.asarray(rec.input_ids, dtype=np.int64)
            mask = np.arange(len(ids)) >= (rec.prompt_length or 0)
        else:
            parts_ids, parts_mask = [], []
            for b, pos, is_resp in plan:
                toks = encoded[b][pos]
                if is_resp and rec.text is None and template.add_eos:
                    toks = toks + [eos]
                parts_ids.append(np.asarray(toks, dtype=np.int64))
                parts_mask.append(np.full(len(toks), is_resp, dtype=bool))
            ids, mask = np.concatenate(parts_ids), np.concatenate(parts_mask)
        try:
            if len(ids) == 0:
                raise DataError(rec.source, "text", "encodes to no tokens")
            if vocab_size is not None and (ids.max() >= vocab_size or ids.min() < 0):
                j = int(np.flatnonzero((ids >= vocab_size) | (ids < 0))[0])
                raise DataError(rec.source, f"input_ids[{j}]", f"token id {int(ids[j])} out of range for the vocabulary size {vocab_size}")
            if len(ids) > max_length and overflow == "error":
                raise DataError(rec.source, "input_ids" if plan is None else "record",
                                f"{len(ids)} tokens, longer than the maximum length {max_length}")
        except DataError as e:
            if not skip_bad:
                raise
            report.skipped.append((rec.source, str(e)))
            continue
        n = len(ids)
        report.longest = max(report.longest, n)
        truncated = n > max_length
        if truncated:
            if overflow == "drop":
                report.dropped.append((rec.index, rec.id, n))
                continue
            report.truncated.append((rec.index, rec.id, n))
            ids, mask = ids[:max_length], mask[:max_length]
        ex = Example(index=rec.index, id=rec.id, category=rec.category, input_ids=ids.astype(np.int32),
                     response_mask=mask, truncated=truncated, source=rec.source)
        if not mask.any():
            report.no_response.append((rec.index, rec.id))
        report.tokens += len(ex)
        report.response_tokens += ex.response_tokens
        examples.append(ex)
    report.examples_out = len(examples)
    return examples, report


# ----------------------------------------------------------------------------------------------
# Split and duplicates
# ----------------------------------------------------------------------------------------------


def _content_key(item: Record | Example) -> bytes:
    if isinstance(item, Example):
        return item.input_ids.astype("<i4").tobytes() + item.response_mask.astype(np.uint8).tobytes()
    return item.content_key().encode("utf-8")


def split_train_val(items: Sequence, val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Split Records (or Examples) into (train, val), deterministically by a hash of their content.

    Items are ranked by sha256(seed, content) and the lowest-ranked round(n * val_fraction) go
    to validation, so the split depends only on the set of contents and the seed, not on order.
    Exact duplicates hash alike and always land on the same side (val may then hold one or two
    more). Both lists keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    salt = f"mbc-jax-split:{seed}:".encode()
    keys = [hashlib.sha256(salt + _content_key(x)).digest() for x in items]
    k = round(len(items) * val_fraction)
    val_keys: set[bytes] = set()
    count = 0
    by_key: dict[bytes, int] = {}
    for key in keys:
        by_key[key] = by_key.get(key, 0) + 1
    for key in sorted(by_key):
        if count >= k:
            break
        val_keys.add(key)
        count += by_key[key]
    train = [x for x, key in zip(items, keys) if key not in val_keys]
    val = [x for x, key in zip(items, keys) if key in val_keys]
    return train, val


def duplicate_report(items: Sequence[Record | Example]) -> dict:
    """Exact duplicates of what the model sees (id and category ignored).

    Returns {"groups": [[index, ...], ...] (record indices, groups of 2 or more, in input order),
    "n_groups", "n_duplicates" (copies beyond the first of each group), "mixed_category_groups"
    (groups whose records disagree on category)}.
    """
    groups: dict[bytes, list] = {}
    for x in items:
        groups.setdefault(_content_key(x), []).append(x)
    dup = [g for g in groups.values() if len(g) > 1]
    return {
        "groups": [[x.index for x in g] for g in dup],
        "n_groups": len(dup),
        "n_duplicates": sum(len(g) - 1 for g in dup),
        "mixed_category_groups": sum(1 for g in dup if len({x.category for x in g}) > 1),
    }


# ----------------------------------------------------------------------------------------------
# Batching: packing, bucketing, padding
# ----------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Fixed-shape numpy arrays; padding has segment_ids 0 (its input_ids are 0)."""

    input_ids: np.ndarray  # int32 [B, T]
    segment_ids: np.ndarray  # int32 [B, T]: 0 padding, s >= 1 the s-th record of the row
    positions: np.ndarray  # int32 [B, T]: position inside its own record, 0 on padding
    response_mask: np.ndarray  # bool [B, T]
    record_index: np.ndarray  # int32 [B, S]: index into the examples list of segment s+1, -1 if none

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    @property
    def real_tokens(self) -> int:
        return int((self.segment_ids > 0).sum())


def _check_lengths(examples: Sequence[Example], seq_len: int) -> None:
    for i, ex in enumerate(examples):
        if len(ex) > seq_len:
            raise UserError(f"example {i} (id {ex.id}, {ex.source or 'index ' + str(ex.index)}) has {len(ex)} tokens, "
                            f"more than the row length {seq_len}: tokenize with max_length <= {seq_len}")
        if len(ex) == 0:
            raise UserError(f"example {i} (id {ex.id}) has no tokens")


def _build_batches(rows: list[list[int]], examples: Sequence[Example], seq_len: int, rows_per_batch: int,
                   n_segments: int) -> list[Batch]:
    batches = []
    for start in range(0, len(rows), rows_per_batch):
        shape = (rows_per_batch, seq_len)
        ids = np.zeros(shape, np.int32)
        seg = np.zeros(shape, np.int32)
        pos = np.zeros(shape, np.int32)
        resp = np.zeros(shape, bool)
        rec = np.full((rows_per_batch, n_segments), -1, np.int32)
        for b, row in enumerate(rows[start:start + rows_per_batch]):
            t = 0
            for s, i in enumerate(row):
                ex = examples[i]
                n = len(ex)
                ids[b, t:t + n] = ex.input_ids
                seg[b, t:t + n] = s + 1
                pos[b, t:t + n] = np.arange(n)
                resp[b, t:t + n] = ex.response_mask
                rec[b, s] = i
                t += n
        batches.append(Batch(ids, seg, pos, resp, rec))
    return batches


def pack(examples: Sequence[Example], seq_len: int, rows_per_batch: int, max_segments: int | None = None) -> list[Batch]:
    """Pack several examples per row (best-fit decreasing), rows grouped into equal-shape batches.

    Every batch is [rows_per_batch, seq_len] with S = max_segments (or the most segments any row
    got) columns of record_index; the last batch is filled up with empty rows. Each example
    appears exactly once, its tokens contiguous and in order, positions restarting at 0.
    """
    if seq_len < 1 or rows_per_batch < 1 or (max_segments is not None and max_segments < 1):
        raise UserError("pack: seq_len, rows_per_batch and max_segments must be >= 1")
    _check_lengths(examples, seq_len)
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[list[int]] = []
    free: list[int] = []  # free tokens per row
    by_free: dict[int, list[int]] = {}  # free capacity -> open rows (LIFO)
    caps: list[int] = []  # sorted capacities that have open rows
    for i in order:
        n = len(examples[i])
        j = bisect.bisect_left(caps, n)
        if j < len(caps):  # best fit: the open row with the least room that still fits
            c = caps[j]
            r = by_free[c].pop()
            if not by_free[c]:
                del by_free[c]
                caps.pop(j)
        else:
            r = len(rows)
            rows.append([])
            free.append(seq_len)
        rows[r].append(i)
        free[r] -= n
        c = free[r]
        if c > 0 and (max_segments is None or len(rows[r]) < max_segments):
            if c not in by_free:
                bisect.insort(caps, c)
                by_free[c] = []
            by_free[c].append(r)
    n_segments = max_segments or max((len(r) for r in rows), default=1)
    return _build_batches(rows, examples, seq_len, rows_per_batch, n_segments)


def default_bucket_lengths(max_length: int, smallest: int = 64) -> tuple[int, ...]:
    """Powers of two from `smallest` up to (and ending exactly at) max_length, e.g. (64, 128, 256, 512)."""
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        b *= 2
    return tuple(out) + (max_length,)


def bucket(examples: Sequence[Example], bucket_lengths: Sequence[int], tokens_per_batch: int) -> list[Batch]:
    """One example per row, each in the shortest bucket it fits; batches of tokens_per_batch // length rows.

    Batches come bucket by bucket (shortest first), examples in input order within a bucket; each
    bucket's batches share one shape [tokens_per_batch // L, L] (the last one filled with empty rows).
    """
    lengths = sorted(set(int(x) for x in bucket_lengths))
    if not lengths or lengths[0] < 1:
        raise UserError(f"bucket lengths must be positive, got {tuple(bucket_lengths)}")
    _check_lengths(examples, lengths[-1])
    members: dict[int, list[list[int]]] = {L: [] for L in lengths}
    for i, ex in enumerate(examples):
        members[lengths[bisect.bisect_left(lengths, len(ex))]].append([i])
    out = []
    for L in lengths:
        if members[L]:
            out += _build_batches(members[L], examples, L, max(1, tokens_per_batch // L), 1)
    return out


def pad_rows(examples: Sequence[Example], seq_len: int) -> Batch:
    """One example per row, right-padded to seq_len: a single [len(examples), seq_len] batch."""
    _check_lengths(examples, seq_len)
    if not examples:
        raise UserError("pad_rows: no examples")
    return _build_batches([[i] for i in range(len(examples))], examples, seq_len, len(examples), 1)[0]


def padding_stats(batches: Sequence[Batch]) -> dict:
    """Real vs padded token counts over a list of batches (efficiency = real / padded)."""
    real = sum(b.real_tokens for b in batches)
    padded = sum(int(b.input_ids.size) for b in batches)
    return {"batches": len(batches), "real_tokens": real, "padded_tokens": padded,
            "efficiency": real / padded if padded else 0.0,
            "shapes": sorted({b.shape for b in batches})}


def row_bucket(used: int, most: int, divisor: int = 1) -> int:
    """Rows of a packed train batch that needs `used` rows (of at most `most`): the next size in
    1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5x powers of two), rounded up to a multiple
    of the mesh's batch divisor. Each size compiles the train step once, so sizes stay few (about
    2 log2(batch)), while at most a third of a batch's rows are padding: 5 rows run as 6, not 8.
    (With powers of two alone, 16% of the positions of Dolly batches of 8 records at 512 were
    padding rows.)"""
    power = 1 << max(0, (used - 1).bit_length())  # the next power of two
    size = power * 3 // 4 if power >= 4 and used <= power * 3 // 4 else power
    size = -(-max(size, divisor) // divisor) * divisor
    return min(size, -(-most // divisor) * divisor)
