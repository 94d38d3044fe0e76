"""The record types every reader and format shares: the schema names, `Record`, `LoadReport`, `DataError`.

`records.py` (the loader) and the formats it dispatches to (`formats.py`, `trees.py`) all build on these,
so none of them imports another to reach them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mbc_jax import UserError

SCHEMAS: dict[str, str] = {
    "dolly": "instruction, context (optional), response",
    "chat": "messages: [{role, content}]",
    "prompt_completion": "prompt, completion (strings or message lists)",
    "text": "text",
    "tokens": "input_ids, prompt_length (optional)",
    "alpaca": "instruction, input (optional), output, system/history (optional)",
    "sharegpt": "conversations: [{from, value}]",
    "tree": "message_id, parent_id, role, text (one message per row)",
}
ROLES = ("system", "user", "assistant")


class DataError(UserError):
    """Bad input data: `str(e)` is "SOURCE: FIELD: problem", SOURCE being "FILE:LINE"."""

    def __init__(self, source: str, field: str | None = None, problem: str | None = None):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(source if field is None else f"{source}: {field}: {problem}")


@dataclass
class Record:
    """One raw demonstration as parsed.

    `turns` holds (role, text) for the dialogue schemas: Dolly and prompt/completion become
    [("user", prompt), ("assistant", response)]. Dolly's `context` is kept apart in `context` and
    joined to the last user turn by the template (`Template.context_separator`), so the format
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
    format: str  # "jsonl", "json" (array), "parquet", "csv", "tsv" or "hf"
    records_read: int = 0  # every record seen, including skipped ones
    records_loaded: int = 0
    blank_lines: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, message)
    notes: list[str] = field(default_factory=list)  # what a format did (e.g. a tree's expansion counts)
    counts: dict[str, int] = field(default_factory=dict)  # the numbers behind the notes

    def summary(self, max_listed: int = 20) -> str:
        if self.schema == "tree":  # records are dialogues, each a path through several messages
            s = f"{self.path}: loaded {self.records_loaded} dialogues from {self.records_read} messages"
        else:
            s = f"{self.path}: loaded {self.records_loaded} of {self.records_read} records"
        s += f" (schema {self.schema}, {self.format})"
        s += "".join(f"; {note}" for note in self.notes)
        if self.skipped:
            s += f"; skipped {len(self.skipped)} bad record(s):"
            s += "".join(f"\n  {msg}" for _, msg in self.skipped[:max_listed])
            if len(self.skipped) > max_listed:
                s += f"\n  ... and {len(self.skipped) - max_listed} more"
        return s


def json_type_name(v: Any) -> str:
    """The JSON name of a parsed value's type ("object", "array", "string", ...), for error messages."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def get_str(obj: dict, key: str, source: str, *, required: bool = True, nonempty: bool = False,
            default: str = "") -> str:
    """`obj[key]` as a string; missing (or null) is an error when `required`, else `default`."""
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(source, key, "missing")
        return default
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(source, key, f"expected a string, got {json_type_name(v)} ({json.dumps(v)[:40]})")
    if nonempty and not v.strip():
        raise DataError(source, key, "empty")
    return v
