"""Chat-template rendering: a dialogue record -> token ids + assistant-turn mask, with the tokenizer's own template.

    rows = chat_examples(records, tokenizer, template)  # `template.chat`: (ids, mask) or DataError per record
    text, ids = chat_prompt(record, tokenizer, template)    # the generation prompt (add_generation_prompt=True)

Messages: the record's turns in order, roles as the data names them (system, user, assistant); a
Dolly record's context joins its last user turn after `template.context_separator`, as in the
default template. The rendered text is tokenized without the tokenizer's default special tokens,
as transformers' `apply_chat_template` does (a chat template writes its own BOS).

Which tokens are scored (the response mask), per assistant turn:
- with `{% generation %}` markers in the template: the tokens they mark (transformers'
  `return_assistant_tokens_mask`, one batch); their number must equal the number of assistant turns;
- without: the tokens of `render(messages[:i + 1])` after `render(messages[:i], add_generation_prompt=True)`.
  Each shorter rendering must be a token prefix of the longer one and both of the whole
  conversation's rendering; a template (or a tokenizer merging tokens across a turn boundary) that
  breaks this is a DataError naming the record and the template, since the turn's tokens cannot
  then be told apart. The texts of all records are encoded in one batch.
Then each turn's mask ends with its end-of-turn token `template.eos_id(tokenizer)` (the template
file's `eos_token_id`, else the tokenizer's EOS): it is scored, so the model learns to stop there,
and generation stops at it. Template text after it (ChatML's newline between turns) is not scored;
an end-of-turn token directly after a marked span is added to it. A turn whose rendering has no
end-of-turn token is an error naming the template's last special token in the turn (the id to set
as `eos_token_id`), unless `add_eos: false` (then the turn is scored as rendered).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from mbc_jax import UserError
from mbc_jax.data.schema import DataError, Record

if TYPE_CHECKING:
    from mbc_jax.data.template import Template

GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def template_name(tokenizer: Any) -> str:
    """How errors name the chat template: the tokenizer it comes from."""
    return f"the chat template of the tokenizer at {getattr(tokenizer, 'name_or_path', '') or '?'}"


def chat_template_text(tokenizer: Any) -> str:
    """The tokenizer's chat template (Jinja source); UserError when it has none."""
    text = None
    if tokenizer is not None and hasattr(tokenizer, "get_chat_template"):
        try:
            text = tokenizer.get_chat_template()
        except ValueError:
            text = None
    if not text:
        where = getattr(tokenizer, "name_or_path", "") or "the model folder"
        raise UserError(f"{where}: template 'chat' needs the tokenizer's own chat template, and this tokenizer has "
                        "none (no chat_template in tokenizer_config.json, no chat_template.jinja); leave out "
                        "`--template chat` / `template: chat` to use the paper's Human:/Assistant: template, or add a "
                        "chat template to the tokenizer folder")
    return text


def messages(record: Record, context_separator: str = "\n\n") -> list[dict[str, str]]:
    """The record's turns as chat messages; a context joins the last user turn (as in `Template.segments`:
    it belongs to the current instruction, e.g. Alpaca's `input` after its `history`)."""
    users = [k for k, (role, _) in enumerate(record.turns) if role == "user"]
    last_user = users[-1] if users else None
    out = []
    for k, (role, content) in enumerate(record.turns):
        if k == last_user and record.context:
            content = content + context_separator + record.context
        out.append({"role": role, "content": content})
    return out


def _render(tokenizer: Any, record: Record, msgs: list[dict[str, str]], generation_prompt: bool) -> str:
    if not msgs:
        raise DataError(record.source, "messages[0]", "the conversation starts with an assistant turn; "
                        f"{template_name(tokenizer)} needs a message before it to render its generation prompt")
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # Jinja errors and the template's own raise_exception(...)
        raise DataError(record.source, "messages", f"{template_name(tokenizer)} cannot render this record "
                        f"({type(e).__name__}: {e})") from None


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def _not_prefix(tokenizer: Any, record: Record, turn: int, short: list[int], long: list[int], what: str) -> DataError:
    j = next((k for k, (a, b) in enumerate(zip(short, long)) if a != b), min(len(short), len(long)))
    a, b = _text(tokenizer, short[j:j + 4]), _text(tokenizer, long[j:j + 4])
    return DataError(record.source, f"messages[{turn}]", f"{template_name(tokenizer)} is not prefix-consistent: "
                     f"{what} is not a token prefix of the longer rendering (token {j}: {a!r} vs {b!r}), so the "
                     "assistant tokens cannot be told apart; use a template whose turns end in special tokens, or "
                     "one with {% generation %} markers, or the default template")


_Item = tuple[Record, list[dict[str, str]], list[int]]  # (record, its messages, indices of its assistant turns)
_Spans = tuple[list[int], list[tuple[int, int]]]  # (ids, [start, end) of each assistant turn)


def _spans_from_renderings(record: Record, tokenizer: Any, enc: list[list[int]], turns: list[int]) -> _Spans:
    """enc: the whole conversation, then per assistant turn i: messages[:i] with the generation prompt and
    messages[:i + 1]."""
    full, spans = enc[0], []
    for k, i in enumerate(turns):
        prompt, with_turn = enc[1 + 2 * k], enc[2 + 2 * k]
        if with_turn[:len(prompt)] != prompt:
            raise _not_prefix(tokenizer, record, i, prompt, with_turn,
                              "the conversation before this assistant turn, with the generation prompt,")
        if full[:len(with_turn)] != with_turn:
            raise _not_prefix(tokenizer, record, i, with_turn, full, "the conversation up to this assistant turn")
        if len(with_turn) == len(prompt):
            raise DataError(record.source, f"messages[{i}]", f"{template_name(tokenizer)} renders this assistant "
                            "turn as no tokens")
        if spans and len(prompt) < spans[-1][1]:
            raise _not_prefix(tokenizer, record, i, full[:spans[-1][1]], prompt,
                              "the conversation up to the previous assistant turn")
        spans.append((len(prompt), len(with_turn)))
    return full, spans


def _spans_by_rendering(items: list[_Item], tokenizer: Any) -> list[_Spans | DataError]:
    """Every record rendered with and without each assistant turn; all texts encoded in one batch."""
    out: list[Any] = [None] * len(items)
    texts: list[str] = []
    where = []  # (item, first text, number of texts)
    for k, (rec, msgs, turns) in enumerate(items):
        try:
            mine = [_render(tokenizer, rec, msgs, False)]
            for i in turns:
                mine += [_render(tokenizer, rec, msgs[:i], True), _render(tokenizer, rec, msgs[:i + 1], False)]
        except DataError as e:
            out[k] = e
            continue
        where.append((k, len(texts), len(mine)))
        texts += mine
    enc = _encode(tokenizer, texts) if texts else []
    for k, first, n in where:
        rec, _, turns = items[k]
        try:
            out[k] = _spans_from_renderings(rec, tokenizer, enc[first:first + n], turns)
        except DataError as e:
            out[k] = e
    return out


def _spans_by_markers(items: list[_Item], tokenizer: Any) -> list[_Spans | DataError]:
    """The spans the template's {% generation %} markers mark (transformers' return_assistant_tokens_mask), for
    every record the template renders, in one batch."""
    out: list[Any] = [None] * len(items)
    good = []
    for k, (rec, msgs, _) in enumerate(items):
        try:
            _render(tokenizer, rec, msgs, False)  # a record the template refuses is that record's error
            good.append(k)
        except DataError as e:
            out[k] = e
    if not good:
        return out
    try:
        res = tokenizer.apply_chat_template([items[k][1] for k in good], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    except Exception as e:
        raise UserError(f"{template_name(tokenizer)}: cannot find the assistant tokens from its {{% generation %}} "
                        f"markers ({type(e).__name__}: {e})") from None
    for k, ids, marks in zip(good, res["input_ids"], res["assistant_masks"]):
        rec, _, turns = items[k]
        marked = np.asarray(marks, dtype=bool)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], marked, [False]]).astype(np.int8)))
        spans = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
        if len(spans) != len(turns):
            out[k] = DataError(rec.source, "messages", f"{template_name(tokenizer)} marks {len(spans)} "
                               f"{{% generation %}} span(s) for {len(turns)} assistant turn(s); it must mark each "
                               "assistant turn, and nothing else")
        else:
            out[k] = (list(ids), spans)
    return out


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


def _end_at_turn_end(record: Record, tokenizer: Any, template: Template, ids: list[int],
                     spans: list[tuple[int, int]], turns: list[int], special: set[int]) -> list[tuple[int, int]]:
    """Each span through its last end-of-turn token (or the one directly after it); see the module doc."""
    eot = template.eos_id(tokenizer)
    out = []
    for (a, b), turn in zip(spans, turns):
        seg = ids[a:b]
        if eot is not None and eot in seg:
            b = a + len(seg) - seg[::-1].index(eot)
        elif eot is not None and b < len(ids) and ids[b] == eot:
            b += 1
        elif template.add_eos:
            last = next((t for t in reversed(seg) if t in special), None)
            hint = (f"its last special token in the turn is {_text(tokenizer, [last])!r} (id {last}): write a "
                    f"template file with `chat: true` and `eos_token_id: {last}` if that ends a turn, or "
                    if last is not None else "write a template file with `chat: true` and `eos_token_id` set to "
                    "the token that ends a turn, or ")
            eot_text = "none" if eot is None else f"{_text(tokenizer, [eot])!r} (id {eot})"
            raise DataError(record.source, f"messages[{turn}]", f"{template_name(tokenizer)} ends this assistant "
                            f"turn without the end-of-turn token {eot_text}, so the model would not learn to stop; "
                            f"{hint}`add_eos: false` to score the turn as rendered")
        out.append((a, b))
    return out


def chat_examples(records: list[Record], tokenizer: Any,
                  template: Template) -> list[tuple[np.ndarray, np.ndarray] | DataError]:
    """Per dialogue record, (input_ids int64, response_mask bool) rendered with the tokenizer's chat template,
    or the DataError that record raised (the caller raises or counts it)."""
    source = chat_template_text(tokenizer)
    items = []
    for rec in records:
        msgs = messages(rec, template.context_separator)
        items.append((rec, msgs, [i for i, m in enumerate(msgs) if m["role"] == "assistant"]))
    by = _spans_by_markers if GENERATION_MARKER.search(source) else _spans_by_rendering
    special = _special_ids(tokenizer)
    out: list[Any] = []
    for (rec, _, turns), res in zip(items, by(items, tokenizer)):
        if isinstance(res, DataError):
            out.append(res)
            continue
        ids, spans = res
        try:
            spans = _end_at_turn_end(rec, tokenizer, template, ids, spans, turns, special)
        except DataError as e:
            out.append(e)
            continue
        mask = np.zeros(len(ids), dtype=bool)
        for a, b in spans:
            mask[a:b] = True
        out.append((np.asarray(ids, dtype=np.int64), mask))
    return out


def chat_prompt(record: Record, tokenizer: Any, template: Template) -> tuple[str, list[int]]:
    """The text and ids a model continues to answer the record's last assistant turn: the messages
    before it rendered with add_generation_prompt=True."""
    chat_template_text(tokenizer)
    msgs = messages(record, template.context_separator)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    text = _render(tokenizer, record, msgs[:last], True)
    return text, _encode(tokenizer, [text])[0]
