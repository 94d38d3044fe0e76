"""The dialogue template and tokenization: records -> token ids + response mask, and the train/val split.

    examples, report = tokenize(records, tokenizer)  # rendered with `Template()`, truncated to max_length

`response_mask[j]` is about token j: the target predicted at position j - 1 is a response target
iff `response_mask[j]`. The EOS id that follows each response is resolved in one place,
`Template.eos_id(tokenizer)`. `Template(chat=True)` (`--template chat`, `template: chat`) renders
dialogue records with the tokenizer's own chat template instead (mbc_jax/data/chat.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from mbc_jax import UserError
from mbc_jax.data.chat import chat_examples, chat_prompt
from mbc_jax.data.schema import DataError, Record, json_type_name

OVERFLOW_POLICIES = ("truncate", "drop", "error")
CHAT = "chat"  # the template spec (CLI `--template chat`, config `template: chat`) for the tokenizer's chat template
_NO_EOS = "the tokenizer has no eos_token_id: set eos_token_id in the template, or add_eos: false"
# the fields a chat template replaces: setting one together with `chat: true` is an error
_TEXT_FIELDS = ("system_prefix", "user_prefix", "assistant_prefix", "response_prefix", "turn_separator")


@dataclass(frozen=True)
class Template:
    """The one place for the dialogue format (default: the paper's single-turn dialogue).

    A dialogue renders as text segments; prompt segments are not scored, response segments are:

        [system + turn_separator] user_prefix + user (+ context_separator + context, on the last user turn)
        + assistant_prefix | response_prefix + response | EOS
        [+ turn_separator + user_prefix + user2 + assistant_prefix | response_prefix + response2 | EOS ...]

    i.e. "Human: {instruction}[\\n\\n{context}]\\n\\nAssistant:" | " {response}" | <eos>.
    Segments are encoded separately: the first with the tokenizer's default special tokens
    (OPT's `</s>`), the rest without; an EOS id follows each response when `add_eos`.

    `chat=True` renders with the tokenizer's own chat template (mbc_jax/data/chat.py): the text
    fields above do not apply; `context_separator` still joins a Dolly context to the last user
    turn, `eos_token_id` names the end-of-turn token (scored, and where generation stops) and
    `add_eos: false` lets assistant turns end without it.
    """

    system_prefix: str = ""
    user_prefix: str = "Human: "
    assistant_prefix: str = "\n\nAssistant:"
    response_prefix: str = " "
    turn_separator: str = "\n\n"
    context_separator: str = "\n\n"
    add_eos: bool = True
    eos_token_id: int | None = None  # None: the tokenizer's eos_token_id
    chat: bool = False  # True: the tokenizer's chat template renders dialogues (see above for the fields it uses)

    @classmethod
    def from_spec(cls, spec: str | os.PathLike | None) -> Template:
        """A `--template` / `template:` value: None -> the paper's template, "chat" -> the tokenizer's chat
        template, anything else -> a template file (a file named chat: pass it as ./chat)."""
        if spec is None or spec == "":
            return cls()
        if str(spec) == CHAT:
            return cls(chat=True)
        return cls.from_file(spec)

    @classmethod
    def from_dict(cls, d: dict, source: str = "template") -> Template:
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a mapping of template fields, got {json_type_name(d)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k, v in d.items():
            if k not in fields:
                raise UserError(f"{source}: {k}: unknown template field; known fields: {', '.join(fields)}")
            if k in ("add_eos", "chat") and not isinstance(v, bool):
                raise UserError(f"{source}: {k}: expected true or false, got {v!r}")
            if k == "eos_token_id" and v is not None and type(v) is not int:
                raise UserError(f"{source}: {k}: expected an integer or null, got {v!r}")
            if k not in ("add_eos", "eos_token_id", "chat") and not isinstance(v, str):
                raise UserError(f"{source}: {k}: expected a string, got {v!r}")
        if d.get("chat"):
            extra = [k for k in _TEXT_FIELDS if k in d and d[k] != fields[k].default]  # to_dict() round-trips
            if extra:
                raise UserError(f"{source}: {', '.join(extra)}: not used with `chat: true` (the tokenizer's chat "
                                "template renders the turns); remove them, or remove `chat: true`")
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
                d = yaml.safe_load(text) or {}
            else:
                d = json.loads(text)
        except Exception as e:
            raise UserError(f"{path}: cannot parse template ({type(e).__name__}: {e})") from None
        return cls.from_dict(d, path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def eos_id(self, tokenizer: Any) -> int | None:
        """The id that ends each response: `eos_token_id` when set, else the tokenizer's (None if it has none)."""
        return self.eos_token_id if self.eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)

    def segments(self, record: Record) -> list[tuple[str, bool]]:
        """(text, is_response) segments of a dialogue record; an EOS token follows each response.
        Not for chat templates: they render whole conversations (`tokenize`, `prompt(record, tokenizer)`)."""
        if self.chat:
            raise UserError(f"{record.source}: a chat template renders whole conversations, not text segments; "
                            "tokenize the record, or ask for its prompt with the tokenizer")
        if record.schema in ("text", "tokens") or not record.turns:
            raise ValueError(f"{record.source}: a {record.schema or 'non-dialogue'} record has no dialogue to render")
        segs: list[tuple[str, bool]] = []
        buf, prev = "", None
        # the context belongs to the last instruction (Alpaca's `input` after its `history`)
        last_user = max((k for k, (role, _) in enumerate(record.turns) if role == "user"), default=-1)
        for k, (role, content) in enumerate(record.turns):
            if role == "system":
                buf += self.system_prefix + content + self.turn_separator
            elif role == "user":
                if k == last_user and record.context:
                    content = content + self.context_separator + record.context
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

    def prompt(self, record: Record, tokenizer: Any = None) -> str:
        """The text before the last response (what a model is asked to continue when generating).
        Chat templates (which need the tokenizer): the turns before it with add_generation_prompt=True."""
        if self.chat:
            return chat_prompt(record, tokenizer, self)[0]
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


def trained_targets(example: Example, loss_on: str) -> int:
    """The loss targets `example` gives under `loss_on` ("response": its response tokens; "full": all but the
    first token)."""
    return example.response_tokens if loss_on == "response" else max(len(example) - 1, 0)


@dataclass
class TargetReport:
    """Training records with nothing to train under `loss_on` (left out of training), and records whose
    response truncation cut (kept), each counted by category."""

    loss_on: str
    no_target: list[Example] = field(default_factory=list)
    cut_response: list[Example] = field(default_factory=list)

    @staticmethod
    def by_category(examples: list[Example]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in examples:
            counts[e.category or "(none)"] = counts.get(e.category or "(none)", 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def as_dict(self) -> dict:
        return {"loss_on": self.loss_on, "no_target": len(self.no_target),
                "no_target_by_category": self.by_category(self.no_target),
                "cut_response": len(self.cut_response), "cut_response_by_category": self.by_category(self.cut_response)}

    def summary(self) -> str:
        def cats(xs: list[Example]) -> str:
            return ", ".join(f"{c} {n}" for c, n in self.by_category(xs).items())

        lines = []
        if self.no_target:
            lines.append(f"left out of training, no {self.loss_on} target after truncation: {len(self.no_target)} "
                         f"records ({cats(self.no_target)}); never drawn, not counted in N, epochs or k")
        if self.cut_response:
            lines.append(f"response cut by truncation, kept: {len(self.cut_response)} records "
                         f"({cats(self.cut_response)})")
        return "\n".join(lines)


def split_trainable(examples: list[Example], loss_on: str) -> tuple[list[Example], TargetReport]:
    """(the records with at least one loss target under `loss_on`, the report of those without and of the
    responses truncation cut)."""
    report = TargetReport(loss_on)
    keep = []
    for e in examples:
        (keep if trained_targets(e, loss_on) else report.no_target).append(e)
        if e.truncated and e.response_tokens:
            report.cut_response.append(e)
    return keep, report


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

    def add(self, other: TokenizeReport) -> None:
        """Counts and lists `other` (the next chunk of a stream of records, tokenized alone) into this report."""
        for name in ("records_in", "examples_out", "tokens", "response_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("truncated", "dropped", "no_response", "skipped"):
            getattr(self, name).extend(getattr(other, name))
        self.longest = max(self.longest, other.longest)

    def summary(self, max_listed: int = 10) -> str:
        s = (f"tokenized {self.examples_out} of {self.records_in} records: {self.tokens} tokens "
             f"({self.response_tokens} response), longest record {self.longest} tokens, max_length {self.max_length}")

        def ids(xs: list) -> str:
            shown = ", ".join(str(x[1]) for x in xs[:max_listed])
            return shown + (f", ... (+{len(xs) - max_listed})" if len(xs) > max_listed else "")

        if self.truncated:
            s += f"\n  truncated to {self.max_length}: {len(self.truncated)} (ids {ids(self.truncated)})"
        if self.no_response:
            s += (f"\n  no response token left (response metrics undefined): {len(self.no_response)} "
                  f"(ids {ids(self.no_response)})")
        if self.dropped:
            s += f"\n  dropped, longer than {self.max_length}: {len(self.dropped)} (ids {ids(self.dropped)})"
        if self.skipped:
            s += (f"\n  skipped bad records: {len(self.skipped)}"
                  + "".join(f"\n    {m}" for _, m in self.skipped[:max_listed]))
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
    plans, batches, needs_eos = _plan_records(records, tokenizer, template, skip_bad)
    eos = _checked_eos(template, tokenizer, needs_eos, vocab_size)
    encoded = (_encode(tokenizer, batches[0], False), _encode(tokenizer, batches[1], True))

    # 2. assemble, validate, truncate
    examples: list[Example] = []
    for rec, plan in zip(records, plans):
        try:
            ids, mask = _record_ids(rec, plan, encoded, template, eos)
            _check_ids(rec, plan, ids, max_length, overflow, vocab_size)
        except DataError as e:
            if not skip_bad:
                raise
            report.skipped.append((rec.source, str(e)))
            continue
        ex = _fit(rec, ids, mask, max_length, overflow, report)
        if ex is not None:
            examples.append(ex)
    report.examples_out = len(examples)
    return examples, report


def _plan_records(records: Sequence[Record], tokenizer: Any, template: Template, skip_bad: bool
                  ) -> tuple[list[Any], tuple[list[str], list[str]], bool]:
    """Per record, where its pieces sit in the two encoding batches (without / with special tokens):
    None (pre-tokenized), [(which batch, position, is_response)], or, with a chat template, the (ids,
    mask) or DataError chat_examples gave it; the two batches of texts; and whether an EOS is appended."""
    plans: list[Any] = []
    batches: tuple[list[str], list[str]] = ([], [])
    needs_eos = False
    chat_rows = iter(())
    if template.chat:
        dialogues = [r for r in records if not (r.schema == "tokens" or r.input_ids is not None or r.text is not None)]
        if dialogues and tokenizer is None:
            raise UserError(f"{dialogues[0].source}: a tokenizer is needed for {dialogues[0].schema} records")
        if dialogues and template.add_eos and template.eos_id(tokenizer) is None:
            raise UserError(_NO_EOS)
        chat_rows = iter(chat_examples(dialogues, tokenizer, template) if dialogues else [])
    for rec in records:
        if rec.schema == "tokens" or rec.input_ids is not None:
            plans.append(None)
            continue
        if tokenizer is None:
            raise UserError(f"{rec.source}: a tokenizer is needed for {rec.schema or 'text'} records")
        if rec.text is not None:
            pieces = [(rec.text, True)]
        elif template.chat:
            row = next(chat_rows)
            if isinstance(row, DataError) and not skip_bad:
                raise row
            plans.append(row)  # (ids, mask), or a DataError skipped and counted later, in input order
            continue
        else:
            pieces = template.segments(rec)
            needs_eos = needs_eos or template.add_eos
        plan = []
        for k, (text, is_resp) in enumerate(pieces):
            b = 1 if k == 0 else 0
            plan.append((b, len(batches[b]), is_resp))
            batches[b].append(text)
        plans.append(plan)
    return plans, batches, needs_eos


def _checked_eos(template: Template, tokenizer: Any, needs_eos: bool, vocab_size: int | None) -> int | None:
    """The EOS id the template appends; an error when one is needed and missing or outside the vocabulary."""
    eos = template.eos_id(tokenizer)
    if needs_eos and eos is None:
        raise UserError(_NO_EOS)
    if needs_eos and vocab_size is not None and not 0 <= eos < vocab_size:
        where = ("the template's eos_token_id" if template.eos_token_id is not None
                 else f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')} (tokenizer files)")
        raise UserError(f"{where}: eos_token_id {eos} is outside the model's vocabulary (ids 0..{vocab_size - 1}); "
                        "set eos_token_id in the template or fix the tokenizer files")
    return eos


def _record_ids(rec: Record, plan: Any, encoded: tuple[list[list[int]], list[list[int]]], template: Template,
                eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One record's token ids and response mask from its plan (a planned DataError is raised)."""
    if isinstance(plan, DataError):
        raise plan
    if plan is None:
        ids = np.asarray(rec.input_ids, dtype=np.int64)
        return ids, np.arange(len(ids)) >= (rec.prompt_length or 0)
    if isinstance(plan, tuple):
        return plan
    parts_ids, parts_mask = [], []
    for b, pos, is_resp in plan:
        toks = encoded[b][pos]
        if is_resp and rec.text is None and template.add_eos:
            toks = toks + [eos]
        parts_ids.append(np.asarray(toks, dtype=np.int64))
        parts_mask.append(np.full(len(toks), is_resp, dtype=bool))
    return np.concatenate(parts_ids), np.concatenate(parts_mask)


def _check_ids(rec: Record, plan: Any, ids: np.ndarray, max_length: int, overflow: str,
               vocab_size: int | None) -> None:
    """DataError for a record that encodes to nothing, has an id outside the vocabulary, or (overflow
    "error") is longer than max_length."""
    if len(ids) == 0:
        raise DataError(rec.source, "text", "encodes to no tokens")
    if vocab_size is not None and (ids.max() >= vocab_size or ids.min() < 0):
        j = int(np.flatnonzero((ids >= vocab_size) | (ids < 0))[0])
        raise DataError(rec.source, f"input_ids[{j}]",
                        f"token id {int(ids[j])} out of range for the vocabulary size {vocab_size}")
    if len(ids) > max_length and overflow == "error":
        raise DataError(rec.source, "input_ids" if plan is None else "record",
                        f"{len(ids)} tokens, longer than the maximum length {max_length}")


def _fit(rec: Record, ids: np.ndarray, mask: np.ndarray, max_length: int, overflow: str,
         report: TokenizeReport) -> Example | None:
    """The record's Example within max_length (truncated, or None when dropped), counted in `report`."""
    n = len(ids)
    report.longest = max(report.longest, n)
    truncated = n > max_length
    if truncated:
        if overflow == "drop":
            report.dropped.append((rec.index, rec.id, n))
            return None
        report.truncated.append((rec.index, rec.id, n))
        ids, mask = ids[:max_length], mask[:max_length]
    ex = Example(index=rec.index, id=rec.id, category=rec.category, input_ids=ids.astype(np.int32),
                 response_mask=mask, truncated=truncated, source=rec.source)
    if not mask.any():
        report.no_response.append((rec.index, rec.id))
    report.tokens += len(ex)
    report.response_tokens += ex.response_tokens
    return ex


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
