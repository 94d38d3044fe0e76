"""Conversation trees: flat message exports with parent ids (OpenAssistant style), expanded into dialogues.

One input row is one message:

| key             | meaning                                                                   |
|-----------------|---------------------------------------------------------------------------|
| `message_id`    | string or integer, unique in the input                                    |
| `parent_id`     | the message replied to; null (or missing) for a tree's first prompt       |
| `role`          | `prompter` / `user`, `assistant`, or `system`                             |
| `text`          | the message (an assistant message may not be empty)                       |
| `rank`          | optional, among siblings: 0 is the best; unranked messages come after     |
| `deleted`       | optional boolean                                                          |
| `review_result` | optional boolean (false: failed review; null or missing: not reviewed)    |
| `category`      | optional, read from a tree's first message                                |

OpenAssistant also publishes the same trees nested, one tree per line (`*.trees.jsonl`): `prompt` is the
first message and each message's `replies` are its children. Such rows are read as the flat messages they
hold (a message's parent is the one it is nested in), and a message's source names its place in the line
(`FILE:LINE: prompt.replies[1]`).

Expansion (`tree`): `best` follows the top-ranked reply at every turn (ties: input order), the usual
SFT choice; `all` gives every root-to-leaf path. Trailing prompts without a reply are cut off (the paths
cut are counted); a path with no assistant reply gives no record (counted). Identical paths after that
cut are kept once (the others counted as merged).
A record's id is its path, the message ids joined by `/`; its source is its last message's line.

Filters (`tree_filter`, comma-separated, `none` for none): `deleted` (deleted: true), `failed_review`
(review_result: false), `unreviewed` (review_result not true). A filtered message takes its replies
with it; both are counted in the report. A missing parent (an orphan), a cycle of parent ids, an
empty assistant message or any other bad field is a `DataError` naming the message's line; with
`skip_bad` it is counted, listed, and its replies are dropped with it (counted).

The load summary's counts add up: every message read is kept, filtered (per filter), unreadable,
an orphan, in a cycle, or below one of those (`MESSAGE_PARTS`); every path is a dialogue, merged, or
without a reply (`PATH_PARTS`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mbc_jax import UserError
from mbc_jax.data.schema import DataError, LoadReport, Record, json_type_name

TREE_MODES = ("best", "all")
TREE_FILTERS = ("deleted", "failed_review", "unreviewed")
DEFAULT_TREE_FILTER = "deleted,failed_review"
TREE_ROLES = {"prompter": "user", "user": "user", "assistant": "assistant", "system": "system"}


def parse_filter(spec: str | None) -> tuple[str, ...]:
    if spec is None:
        spec = DEFAULT_TREE_FILTER
    names = tuple(s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none")
    bad = [n for n in names if n not in TREE_FILTERS]
    if bad:
        raise UserError(f"tree_filter: unknown filter {bad[0]!r}; known: {', '.join(TREE_FILTERS)} (or none)")
    return names


@dataclass
class _Message:
    id: str
    parent: str | None
    role: str
    text: str
    rank: float
    order: int
    source: str
    raw: dict
    children: list[_Message] = field(default_factory=list)


def _id(v: Any, source: str, key: str, *, nullable: bool) -> str | None:
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "":
        raise DataError(source, key, "missing" if v is None else
                        f"expected a non-empty string or integer, got {json_type_name(v)} ({v!r})"[:120])
    return str(v)


def _message(obj: Any, order: int, source: str) -> _Message:
    if not isinstance(obj, dict):
        raise DataError(source, "record", f"expected a JSON object (one message), got {json_type_name(obj)}")
    mid = _id(obj.get("message_id"), source, "message_id", nullable=False)
    parent = _id(obj.get("parent_id"), source, "parent_id", nullable=True)
    name = obj.get("role")
    if name is None:
        raise DataError(source, "role", "missing")
    role = TREE_ROLES.get(name) if isinstance(name, str) else None
    if role is None:
        raise DataError(source, "role", f"unknown role {name!r} (expected one of {', '.join(TREE_ROLES)})")
    text = obj.get("text")
    if text is None:
        raise DataError(source, "text", "missing")
    if not isinstance(text, str):
        raise DataError(source, "text", f"expected a string, got {json_type_name(text)}")
    if role == "assistant" and not text.strip():
        raise DataError(source, "text", "empty assistant message")
    rank = obj.get("rank")
    if rank is None or (isinstance(rank, float) and math.isnan(rank)):
        rank = math.inf
    elif isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise DataError(source, "rank", f"expected a number or null, got {json_type_name(rank)}")
    for key in ("deleted", "review_result"):
        if obj.get(key) is not None and not isinstance(obj[key], bool):
            raise DataError(source, key, f"expected true, false or null, got {json_type_name(obj[key])}")
    return _Message(mid, parent, role, text, float(rank), order, source, obj)


def is_nested_tree(obj: Any) -> bool:
    """A row of the nested export: one whole tree, its first message under `prompt`."""
    return isinstance(obj, dict) and isinstance(obj.get("prompt"), dict) and "message_id" in obj["prompt"]


def flatten_nested(items: Iterable[tuple[str, Any, DataError | None]]) -> Iterator[tuple[str, Any, DataError | None]]:
    """Each nested-tree row as its messages, in depth-first input order (other rows pass through)."""
    for source, obj, err in items:
        if err is not None or not is_nested_tree(obj):
            yield source, obj, err
            continue
        stack: list[tuple[Any, str | None, str]] = [(obj["prompt"], None, "prompt")]
        while stack:
            m, parent, where = stack.pop()
            here = f"{source}: {where}"
            if not isinstance(m, dict):
                yield here, m, None  # reported by _message as not a message object
                continue
            row = {k: v for k, v in m.items() if k != "replies"}
            if parent is not None and row.get("parent_id") is None:
                row["parent_id"] = parent
            replies = m.get("replies", [])
            if parent is not None and row["parent_id"] != parent:
                yield here, row, DataError(here, "parent_id", f"{row['parent_id']!r}, but the message is nested in "
                                           f"the replies of {parent!r}")
                continue
            if replies is None:
                replies = []
            if not isinstance(replies, list):
                yield here, row, DataError(here, "replies", f"expected an array of messages, got "
                                           f"{json_type_name(replies)}")
                continue
            yield here, row, None
            mid = row.get("message_id")
            stack.extend((replies[k], mid if isinstance(mid, (str, int)) and not isinstance(mid, bool) else "?",
                          f"{where}.replies[{k}]") for k in reversed(range(len(replies))))


def _filtered(m: _Message, filters: tuple[str, ...]) -> str | None:
    if "deleted" in filters and m.raw.get("deleted") is True:
        return "deleted"
    if "failed_review" in filters and m.raw.get("review_result") is False:
        return "failed_review"
    if "unreviewed" in filters and m.raw.get("review_result") is not True:
        return "unreviewed"
    return None


def build_records(items: Iterable[tuple[str, Any, DataError | None]], report: LoadReport, *, mode: str = "best",
                  tree_filter: str | None = None, skip_bad: bool = False,
                  fix: Callable[[DataError], DataError] = lambda e: e) -> list[Record]:
    """Records of the dialogues in a flat message export (see the module docstring)."""
    if mode not in TREE_MODES:
        raise UserError(f"tree: {mode!r} is not one of {', '.join(TREE_MODES)}")
    filters = parse_filter(tree_filter)
    counts: Counter[str] = Counter()

    def bad(source: str, e: DataError) -> None:
        e = fix(e)
        if not skip_bad:
            raise e
        report.skipped.append((source, str(e)))

    msgs, status = _read_messages(flatten_nested(items), filters, report, bad, counts)
    for m in sorted(msgs.values(), key=lambda x: x.order):
        if status[m.id] == "?":
            _settle(m, msgs, status, bad, counts)
    counts["kept"] = sum(v == "ok" for v in status.values())
    roots = _link_trees(msgs, status)
    records = _dialogues(_paths(roots, mode), counts)
    report.counts.update({k: v for k, v in counts.items() if v})
    report.notes.append(_note(counts, len(roots), len(records), mode))
    return records


MESSAGE_PARTS = (  # every message read is exactly one of these (tests hold the sum to the messages read)
    ("kept", None), ("deleted", "deleted messages filtered"), ("failed_review", "messages that failed review filtered"),
    ("unreviewed", "unreviewed messages filtered"), ("unreadable", "unreadable messages skipped"),
    ("orphan", "orphan messages (parent not in the input)"), ("cycle", "messages in reply cycles"),
    ("below_out", "replies dropped below a filtered, bad, orphan or cyclic message"))
PATH_PARTS = (  # every path is a dialogue, merged, or without a reply; `cut` counts dialogues cut back
    ("cut", "cut back to their last assistant reply (they ended on an unanswered prompt)"),
    ("merged", "merged as duplicates after that cut"), ("no_reply", "without an assistant reply"))


def _note(counts: Counter[str], trees: int, dialogues: int, mode: str) -> str:
    """The load summary's tree line: the messages kept, filtered, skipped and dropped, then the paths."""
    out = [f"{counts['kept']} messages kept in {trees} trees -> {dialogues} dialogues (tree: {mode})"]
    out += [f"{counts[k]} {label}" for k, label in MESSAGE_PARTS[1:] if counts[k]]
    paths = "root-to-leaf paths" if mode == "all" else "best paths (one per tree)"
    parts = [f"{counts[k]} {label}" for k, label in PATH_PARTS if counts[k]]
    if parts:
        out.append(f"of {counts['paths']} {paths}: " + ", ".join(parts))
    return "; ".join(out)


def _read_messages(items: Iterable[tuple[str, Any, DataError | None]], filters: tuple[str, ...], report: LoadReport,
                   bad: Callable[[str, DataError], None], counts: Counter[str]
                   ) -> tuple[dict[str, _Message], dict[str, str]]:
    """The messages by id, and each one's status: a filter's reason, "bad" (unreadable: its replies go
    with it) or "?" (not settled yet); bad items go to `bad`."""
    msgs: dict[str, _Message] = {}
    status: dict[str, str] = {}  # message id -> "ok" or why it is out
    for order, (source, obj, err) in enumerate(items):
        report.records_read += 1
        try:
            if err is not None:
                raise err
            m = _message(obj, order, source)
            if m.id in msgs:
                raise DataError(source, "message_id", f"{m.id!r} again (first at {msgs[m.id].source})")
        except DataError as e:
            bad(source, e)
            counts["unreadable"] += 1
            mid = obj.get("message_id") if isinstance(obj, dict) else None
            if isinstance(mid, (str, int)) and not isinstance(mid, bool) and str(mid) not in msgs:
                status[str(mid)] = "bad"  # its replies go with it
            continue
        msgs[m.id] = m
        reason = _filtered(m, filters)
        status[m.id] = reason or "?"
        if reason:
            counts[reason] += 1
    return msgs, status


def _settle(m: _Message, msgs: dict[str, _Message], status: dict[str, str], bad: Callable[[str, DataError], None],
            counts: Counter[str]) -> str:
    """Walk up to a settled ancestor; settle the walked chain; report orphans and cycles."""
    chain, seen = [], set()
    cur: _Message | None = m
    while cur is not None and status.get(cur.id) == "?":
        if cur.id in seen:  # a cycle: report it at its first message in input order
            loop = chain[chain.index(cur):]
            first = min(loop, key=lambda x: x.order)
            path = " -> ".join(x.id for x in loop[loop.index(first):] + loop[:loop.index(first)] + [first])
            bad(first.source, DataError(first.source, "parent_id", f"cycle of replies: {path}"))
            counts["cycle"] += len(loop)
            for x in loop:
                status[x.id] = "cycle"
            break
        seen.add(cur.id)
        chain.append(cur)
        if cur.parent is None:
            status[cur.id] = "ok"
            break
        if cur.parent not in status:
            bad(cur.source, DataError(cur.source, "parent_id",
                                      f"no message {cur.parent!r} in the input (an orphan)"))
            counts["orphan"] += 1
            status[cur.id] = "orphan"
            break
        cur = msgs.get(cur.parent)
    for x in reversed(chain):
        if status[x.id] == "?":
            up = status.get(x.parent, "bad")
            status[x.id] = "ok" if up == "ok" else "below_out"
            counts["below_out"] += status[x.id] == "below_out"
    return status[m.id]


def _link_trees(msgs: dict[str, _Message], status: dict[str, str]) -> list[_Message]:
    """Attach every kept message to its parent (children by rank, then input order); the roots."""
    roots = []
    for m in sorted(msgs.values(), key=lambda x: x.order):
        if status[m.id] != "ok":
            continue
        if m.parent is None:
            roots.append(m)
        else:
            msgs[m.parent].children.append(m)
    for m in msgs.values():
        m.children.sort(key=lambda x: (x.rank, x.order))
    return roots


def _paths(roots: list[_Message], mode: str) -> list[list[_Message]]:
    """Root-to-leaf paths: the best-ranked child at each turn ("best"), or every path."""
    paths: list[list[_Message]] = []
    for root in roots:
        stack = [[root]]
        while stack:
            path = stack.pop()
            kids = path[-1].children
            if not kids:
                paths.append(path)
            elif mode == "best":
                stack.append(path + [kids[0]])
            else:
                stack.extend(path + [k] for k in reversed(kids))
    return paths


def _dialogues(paths: list[list[_Message]], counts: Counter[str]) -> list[Record]:
    """One Record per distinct path cut after its last assistant message (counted: the paths, those without
    a reply, those cut back to their last reply, and those merged as duplicates after the cut)."""
    records, seen_paths = [], set()
    counts["paths"] += len(paths)
    for path in paths:
        ended_on_prompt = bool(path) and path[-1].role != "assistant"
        while path and path[-1].role != "assistant":
            path = path[:-1]
        if not path:
            counts["no_reply"] += 1
            continue
        counts["cut"] += ended_on_prompt
        key = tuple(x.id for x in path)
        if key in seen_paths:
            counts["merged"] += 1
            continue
        seen_paths.add(key)
        category = path[0].raw.get("category")
        records.append(Record(index=len(records), id="/".join(key), category=category if isinstance(category, str)
                              else "", turns=[(x.role, x.text) for x in path], source=path[-1].source, schema="tree"))
    return records
