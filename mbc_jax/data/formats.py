"""Public demonstration formats mapped onto `Record`: Alpaca, ShareGPT, TRL conversational, column mappings.

Each parser fills the dialogue of a `Record` that `records.load_records` has begun (id, category,
source); a bad field raises `DataError` ("FILE:LINE: FIELD: problem") like every other schema.

| format              | keys                                                               |
|---------------------|--------------------------------------------------------------------|
| `alpaca`            | `instruction`, `input` (optional), `output`, `system`, `history`   |
| `sharegpt`          | `conversations: [{from, value}]` (or `{role, content}`), `system`  |
| `prompt_completion` | `prompt`, `completion` as message lists (TRL conversational)      |

Alpaca's `input` is the record's `context` (joined to the last instruction by the template, as Dolly's
context is); `history` is `[[instruction, output], ...]`, earlier turns. Every assistant turn is a
response turn (scored), in every format: where TRL trains only a conversational `completion`, an
assistant message inside the `prompt` list is scored here too.

A message's content may be an array of text parts (`message_text`); a per-turn `weight` that asks for
something other than what is done is an error (`check_weight`), in `chat` records too.

`FieldMap` (`--fields instruction=question,response=answer`) renames a file's columns onto the record
keys before the schema is detected; errors then name the file's column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mbc_jax import UserError
from mbc_jax.data.schema import ROLES, DataError, Record, get_str, json_type_name

# ShareGPT speaker names seen in public exports (lower-cased), and the role each one is
SHAREGPT_ROLES: dict[str, str] = {
    "human": "user", "user": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant", "claude": "assistant",
    "system": "system",
}
# every key some schema reads: the targets a --fields mapping may name
RECORD_KEYS = ("id", "category", "instruction", "context", "input", "response", "output", "system", "history",
               "prompt", "completion", "messages", "conversations", "text", "input_ids", "prompt_length",
               "message_id", "parent_id", "role", "rank", "deleted", "review_result")


def detect(obj: Any) -> str | None:
    """The format of a record whose keys only one of these formats has; None leaves it to `records`."""
    if not isinstance(obj, dict):
        return None
    if "message_id" in obj and "parent_id" in obj:
        return "tree"
    if isinstance(obj.get("prompt"), dict) and "message_id" in obj["prompt"]:  # a nested tree (trees.py)
        return "tree"
    if "conversations" in obj and "messages" not in obj:
        return "sharegpt"
    if "instruction" in obj and "output" in obj and "response" not in obj:
        return "alpaca"
    return None


def message_text(m: dict, key: str, where: str, source: str) -> str:
    """A message's content: a string, or an array of text parts (`[{type: text, text}]`, the content-parts
    shape of OpenAI's API and HF chat data), joined as they stand. Any other part is an error naming it."""
    content = m.get(key)
    if content is None:
        raise DataError(source, f"{where}.{key}", "missing")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    hint = " (an array is read when every part is {type: text, text: STRING})" if isinstance(content, list) else ""
    raise DataError(source, f"{where}.{key}", f"expected a string, got {json_type_name(content)}{hint}")


def check_weight(m: dict, role: str, where: str, source: str) -> None:
    """A per-turn `weight` (axolotl/SlimOrca ShareGPT) must say what is done anyway: 1 on assistant turns, which
    are all trained and scored, 0 (or null) elsewhere; any other weight would be silently ignored, so it is an error."""
    w = m.get("weight")
    if w is None:
        return
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise DataError(source, f"{where}.weight", f"expected a number or null, got {json_type_name(w)}")
    want = 1 if role == "assistant" else 0
    if w != want:
        raise DataError(source, f"{where}.weight", f"{w} on a{'n' if role == 'assistant' else ''} {role} turn: "
                        "per-turn weights are not read (every assistant turn is trained and scored, weight 1; "
                        "no other turn is, weight 0); drop the turn or the weight")


def _message_list(value: Any, field: str, source: str, role_key: str = "role", content_key: str = "content",
                  names: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(role, content) of a JSON array of messages; `names` maps speaker names to roles (None: ROLES as is)."""
    if value is None:
        raise DataError(source, field, "missing")
    if not isinstance(value, list):
        raise DataError(source, field, f"expected an array of messages, got {json_type_name(value)}")
    if not value:
        raise DataError(source, field, "empty")
    turns = []
    for k, m in enumerate(value):
        where = f"{field}[{k}]"
        if not isinstance(m, dict):
            raise DataError(source, where, f"expected an object with {role_key} and {content_key}, "
                            f"got {json_type_name(m)}")
        rk, ck = role_key, content_key
        if names is not None and rk not in m and "role" in m:  # ShareGPT files that use role/content
            rk, ck = "role", "content"
        name = m.get(rk)
        if name is None:
            raise DataError(source, f"{where}.{rk}", "missing")
        role = (names.get(name.lower()) if isinstance(name, str) else None) if names is not None else name
        if role not in ROLES:
            known = ", ".join(names) if names is not None else ", ".join(ROLES)
            raise DataError(source, f"{where}.{rk}", f"unknown role {name!r} (expected one of {known})")
        content = message_text(m, ck, where, source)
        check_weight(m, role, where, source)
        if role == "assistant" and not content.strip():
            raise DataError(source, f"{where}.{ck}", "empty assistant message")
        turns.append((role, content))
    return turns


def _check_dialogue(turns: list[tuple[str, str]], field: str, source: str) -> None:
    for k, (role, _) in enumerate(turns):
        if role == "system" and k != 0:
            raise DataError(source, field, f"a system message must come first (message {k} is one)")
    if not any(r == "assistant" for r, _ in turns):
        raise DataError(source, field, "no assistant message (nothing to score as response)")


def _system(obj: dict, source: str) -> list[tuple[str, str]]:
    system = get_str(obj, "system", source, required=False)
    return [("system", system)] if system.strip() else []


def parse_alpaca(obj: dict, rec: Record, source: str) -> None:
    turns = _system(obj, source)
    history = obj.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise DataError(source, "history", f"expected an array of [instruction, output] pairs, "
                            f"got {json_type_name(history)}")
        for k, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DataError(source, f"history[{k}]", f"expected an [instruction, output] pair, got "
                                f"{json_type_name(pair)} ({json.dumps(pair, ensure_ascii=False)[:40]})")
            for j, (role, text) in enumerate(zip(("user", "assistant"), pair)):
                if not isinstance(text, str):
                    raise DataError(source, f"history[{k}][{j}]", f"expected a string, got {json_type_name(text)}")
                if role == "assistant" and not text.strip():
                    raise DataError(source, f"history[{k}][{j}]", "empty output")
                turns.append((role, text))
    instruction = get_str(obj, "instruction", source)
    rec.context = get_str(obj, "input", source, required=False)
    output = get_str(obj, "output", source, nonempty=True)
    rec.turns = [*turns, ("user", instruction), ("assistant", output)]


def parse_sharegpt(obj: dict, rec: Record, source: str) -> None:
    turns = _system(obj, source)
    turns += _message_list(obj.get("conversations"), "conversations", source, "from", "value", SHAREGPT_ROLES)
    _check_dialogue(turns, "conversations", source)
    rec.turns = turns


def is_conversational(obj: dict) -> bool:
    """TRL's conversational prompt/completion: message lists instead of strings."""
    return isinstance(obj.get("prompt"), list) or isinstance(obj.get("completion"), list)


def parse_conversational(obj: dict, rec: Record, source: str) -> None:
    for key in ("prompt", "completion"):
        if isinstance(obj.get(key), str):
            raise DataError(source, key, "a string, but the other of prompt/completion is a message list; "
                            "use two strings or two message lists")
    prompt = _message_list(obj.get("prompt"), "prompt", source)
    completion = _message_list(obj.get("completion"), "completion", source)
    k = next((k for k, (role, _) in enumerate(completion) if role != "assistant"), None)
    if k is not None:
        raise DataError(source, f"completion[{k}].role", f"{completion[k][0]!r}: a completion holds assistant "
                        "messages only")
    rec.turns = prompt + completion
    _check_dialogue(rec.turns, "prompt", source)


PARSERS = {"alpaca": parse_alpaca, "sharegpt": parse_sharegpt}


@dataclass(frozen=True)
class FieldMap:
    """`--fields TARGET=COLUMN,...`: the file's COLUMN is read as the record key TARGET."""

    columns: tuple[tuple[str, str], ...]  # (target, column)

    @classmethod
    def parse(cls, spec: str | dict | None, where: str = "--fields") -> FieldMap | None:
        if spec is None or spec == "" or spec == {}:
            return None
        if isinstance(spec, dict):
            pairs = [(str(k), v) for k, v in spec.items()]
        elif isinstance(spec, str):
            pairs = []
            for item in spec.split(","):
                target, eq, column = item.partition("=")
                if not eq or not target.strip() or not column.strip():
                    raise UserError(f"{where}: {item.strip()!r}: expected TARGET=COLUMN, "
                                    "e.g. instruction=question,response=answer")
                pairs.append((target.strip(), column.strip()))
        else:
            raise UserError(f"{where}: expected TARGET=COLUMN,... or a mapping, got {json_type_name(spec)}")
        seen: set[str] = set()
        for target, column in pairs:
            if target not in RECORD_KEYS:
                raise UserError(f"{where}: {target!r} is not a record key; map onto one of {', '.join(RECORD_KEYS)}")
            if not isinstance(column, str) or not column:
                raise UserError(f"{where}: {target}: expected a column name, got {column!r}")
            if target in seen:
                raise UserError(f"{where}: {target} is mapped twice")
            seen.add(target)
        return cls(tuple(pairs))

    def spec(self) -> str:
        return ",".join(f"{t}={c}" for t, c in self.columns)

    def apply(self, obj: Any) -> Any:
        """The row with each mapped column renamed to its target (a column missing stays missing)."""
        if not isinstance(obj, dict):
            return obj
        targets = {t for t, _ in self.columns}
        out = {k: v for k, v in obj.items() if k not in targets}
        for target, column in self.columns:
            if column in obj:
                out[target] = obj[column]
        return out

    def translate(self, e: DataError) -> DataError:
        """The error with the record key it names replaced by the file's column."""
        if e.field is None:
            return e
        head = e.field.split("[", 1)[0].split(".", 1)[0]
        column = dict(self.columns).get(head)
        if column is None:
            return e
        return DataError(e.source, f"{column} (read as {head}){e.field[len(head):]}", e.problem)

    def items(self, items: Iterable[tuple[str, Any, DataError | None]]) -> Iterator[tuple[str, Any, DataError | None]]:
        for source, obj, err in items:
            yield source, self.apply(obj), err
