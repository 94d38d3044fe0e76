"""mbc_jax/data/chat.py: records rendered with the tokenizer's own chat template (the real GPT-Neo tokenizer
given hand-written Jinja templates). Masks are checked against an independent computation: the
conversation written out by hand in Python, and each assistant text (with its end-of-turn token)
tokenized alone and located in the ids."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import TOKENIZER_DIR
from mbc_jax import UserError
from mbc_jax.data import DataError, Record, Template, tokenize
from mbc_jax.data import chat as chat_lib
from mbc_jax.generate.answers import build_prompts

EOS = 50256
# ChatML-like, the turn ends in the tokenizer's EOS (GPT-Neo has no <|im_start|>/<|im_end|> tokens: they are text)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.role == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# the same rendering, assistant content marked with {% generation %} (the EOS outside the marked span)
CHATML_MARKED = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{{ eos_token }}"
    "{% else %}{{ m.content }}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TURNS = [("system", "You are terse. Answer in one sentence."), ("user", "What is the capital of France?"),
         ("assistant", "Paris is the capital of France."), ("user", "And of Italy?"),
         ("assistant", "Rome, since 1871.")]


@pytest.fixture(scope="module")
def base_tok():
    if not TOKENIZER_DIR.is_dir():
        pytest.skip("../shared/tokenizers not present")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def with_template(tok, template: str | None):
    """The module's tokenizer with this chat template (every test sets the one it uses)."""
    tok.chat_template = template
    return tok


def record(turns=TURNS, context: str = "", schema: str = "chat") -> Record:
    return Record(index=0, id="r0", category="c", turns=list(turns), source="data.jsonl:7", schema=schema,
                  context=context)


def by_hand(turns, end: str = "<|endoftext|>", gen_prompt: bool = False) -> str:
    """CHATML written out in Python."""
    s = "".join(f"<|im_start|>{r}\n{c}{end if r == 'assistant' else '<|im_end|>'}\n" for r, c in turns)
    return s + ("<|im_start|>assistant\n" if gen_prompt else "")


def located_mask(tok, ids: list[int], turns, end: str = "<|endoftext|>") -> np.ndarray:
    """Each assistant text + end-of-turn token tokenized alone, found in order in `ids`."""
    mask, start = np.zeros(len(ids), dtype=bool), 0
    for role, content in turns:
        if role != "assistant":
            continue
        piece = tok(content + end, add_special_tokens=False)["input_ids"]
        at = next(j for j in range(start, len(ids) - len(piece) + 1) if ids[j:j + len(piece)] == piece)
        mask[at:at + len(piece)] = True
        start = at + len(piece)
    return mask


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    e = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(e[::2].tolist(), e[1::2].tolist()))


@pytest.mark.parametrize("jinja", [CHATML, CHATML_MARKED], ids=["rendering", "markers"])
def test_system_multi_turn_mask_is_exactly_the_assistant_turns(base_tok, jinja):
    tok = with_template(base_tok, jinja)
    (ex,), rep = tokenize([record()], tok, Template(chat=True))
    ids = ex.input_ids.tolist()
    assert ids == tok(by_hand(TURNS), add_special_tokens=False)["input_ids"]
    want = located_mask(tok, ids, TURNS)
    assert ex.response_mask.tolist() == want.tolist()
    spans = runs(ex.response_mask)
    assert [tok.decode(ids[a:b]) for a, b in spans] == ["Paris is the capital of France.<|endoftext|>",
                                                        "Rome, since 1871.<|endoftext|>"]
    assert all(ids[b - 1] == EOS for _, b in spans)  # the end-of-turn token is scored: the model learns to stop
    assert tok.decode(ids[spans[0][1]:spans[0][1] + 1]) == "\n"  # the template's text after it is not
    assert rep.response_tokens == int(want.sum()) and rep.tokens == len(ids)


def test_markers_are_used_when_present(base_tok, monkeypatch):
    def never(*a, **k):
        raise AssertionError("rendered with and without each turn although the template has generation markers")

    monkeypatch.setattr(chat_lib, "_spans_by_rendering", never)
    tok = with_template(base_tok, CHATML_MARKED)
    (ex,), _ = tokenize([record()], tok, Template(chat=True))
    assert ex.response_mask.tolist() == located_mask(tok, ex.input_ids.tolist(), TURNS).tolist()


def test_markers_must_mark_each_assistant_turn(base_tok):
    marks_users_too = CHATML_MARKED.replace("{% else %}{{ m.content }}", "{% else %}{% generation %}{{ m.content }}"
                                            "{% endgeneration %}")
    with pytest.raises(DataError, match=r"data.jsonl:7: messages: .* marks 5 \{% generation %\} span\(s\) for 2"):
        tokenize([record()], with_template(base_tok, marks_users_too), Template(chat=True))


def test_special_turn_tokens_and_eos_token_id(base_tok):
    """Real ChatML: <|im_start|>/<|im_end|> as added special tokens; the end of turn is <|im_end|>."""
    tok = with_template(copy.deepcopy(base_tok), CHATML.replace("{{ eos_token }}", "<|im_end|>"))
    tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end == len(base_tok) + 1
    # the tokenizer's EOS never ends a turn: an error naming the token to set
    with pytest.raises(DataError, match=rf"messages\[2\]: .*without the end-of-turn token '<\|endoftext\|>' \(id "
                                        rf"{EOS}\).*'<\|im_end\|>' \(id {im_end}\).*eos_token_id: {im_end}"):
        tokenize([record()], tok, Template(chat=True))
    tmpl = Template.from_dict({"chat": True, "eos_token_id": im_end})
    (ex,), _ = tokenize([record()], tok, tmpl)
    ids = ex.input_ids.tolist()
    assert ids == tok(by_hand(TURNS, end="<|im_end|>"), add_special_tokens=False)["input_ids"]
    assert ex.response_mask.tolist() == located_mask(tok, ids, TURNS, end="<|im_end|>").tolist()
    assert [ids[b - 1] for _, b in runs(ex.response_mask)] == [im_end, im_end]
    # add_eos: false scores each turn as rendered (content, <|im_end|> and the newline)
    (ex2,), _ = tokenize([record()], tok, Template(chat=True, add_eos=False))
    assert [tok.decode(ex2.input_ids[a:b]) for a, b in runs(ex2.response_mask)] == [
        "Paris is the capital of France.<|im_end|>\n", "Rome, since 1871.<|im_end|>\n"]


def test_generation_prompt(base_tok):
    tok = with_template(base_tok, CHATML)
    rec = record()
    (p,) = build_prompts([rec], tok, Template(chat=True))
    want = by_hand(TURNS[:-1], gen_prompt=True)
    assert p.text == want == Template(chat=True).prompt(rec, tok)
    assert p.ids.tolist() == tok(want, add_special_tokens=False)["input_ids"]
    assert p.reference == "Rome, since 1871."
    # the prompt is exactly the training ids before the last assistant turn's mask
    (ex,), _ = tokenize([rec], tok, Template(chat=True))
    assert len(p.ids) == runs(ex.response_mask)[-1][0]


def test_dolly_context_and_single_turn(base_tok):
    tok = with_template(base_tok, CHATML)
    rec = record([("user", "Summarize the text."), ("assistant", "It is short.")], context="A long text.",
                 schema="dolly")
    (ex,), _ = tokenize([rec], tok, Template(chat=True))
    turns = [("user", "Summarize the text.\n\nA long text."), ("assistant", "It is short.")]
    assert ex.input_ids.tolist() == tok(by_hand(turns), add_special_tokens=False)["input_ids"]
    assert ex.response_mask.tolist() == located_mask(tok, ex.input_ids.tolist(), turns).tolist()


def test_no_chat_template_is_a_user_error(base_tok):
    with pytest.raises(UserError, match="template 'chat' needs the tokenizer's own chat template, and this "
                                        "tokenizer has none.*Human:/Assistant:"):
        tokenize([record()], with_template(base_tok, None), Template(chat=True))
    # the default template needs none
    (ex,), _ = tokenize([record()], with_template(base_tok, None))
    assert ex.response_mask.any()


def test_prefix_inconsistent_template_is_an_error(base_tok):
    # the generation prompt ends in a space that BPE merges into the answer's first word once the answer follows
    jinja = ("{% for m in messages %}{% if m.role == 'assistant' %}Assistant: {{ m.content }}{{ eos_token }}"
             "{% else %}{{ m.role }}: {{ m.content }}\n{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}Assistant: {% endif %}")
    tok = with_template(base_tok, jinja)
    with pytest.raises(DataError, match=r"data.jsonl:7: messages\[2\]: the chat template of the tokenizer at .*"
                                        r"gpt-neo-125M is not prefix-consistent.*"
                                        r"\(token 25: ' ' vs ' Paris is the capital'\)"):
        tokenize([record()], tok, Template(chat=True))
    # with skip_bad: a counted skip, the record without an assistant-turn boundary problem kept
    text = Record(index=1, id="r1", category="c", turns=[], text="plain text", source="data.jsonl:8", schema="text")
    exs, rep = tokenize([record(), text], tok, Template(chat=True), skip_bad=True)
    assert [e.id for e in exs] == ["r1"] and [s for s, _ in rep.skipped] == ["data.jsonl:7"]
    assert "skipped bad records: 1" in rep.summary()


def test_template_refusing_a_record_names_it(base_tok):
    jinja = ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             + CHATML)
    tok = with_template(base_tok, jinja)
    with pytest.raises(DataError, match=r"data.jsonl:7: messages: the chat template .* cannot render this record "
                                        r".*System role not supported"):
        tokenize([record()], tok, Template(chat=True))
    (ex,), _ = tokenize([record(TURNS[1:])], tok, Template(chat=True))
    assert ex.response_mask.tolist() == located_mask(tok, ex.input_ids.tolist(), TURNS[1:]).tolist()
    with pytest.raises(DataError, match=r"messages\[0\]: the conversation starts with an assistant turn"):
        tokenize([record([("assistant", "Hi.")])], tok, Template(chat=True))


def test_template_spec_and_fields(tmp_path):
    assert Template.from_spec(None) == Template() and Template.from_spec("chat") == Template(chat=True)
    f = tmp_path / "t.yaml"
    f.write_text("chat: true\neos_token_id: 7\n")
    assert Template.from_spec(str(f)) == Template(chat=True, eos_token_id=7)
    assert Template.from_dict({"chat": True}).to_dict()["chat"] is True
    assert Template.from_dict(Template(chat=True, eos_token_id=3).to_dict()) == Template(chat=True, eos_token_id=3)
    with pytest.raises(UserError, match="user_prefix, turn_separator: not used with `chat: true`"):
        Template.from_dict({"chat": True, "user_prefix": "U: ", "turn_separator": "\n"}, "t.yaml")
    with pytest.raises(UserError, match="chat: expected true or false"):
        Template.from_dict({"chat": "yes"})
    with pytest.raises(UserError, match="a chat template renders whole conversations"):
        Template(chat=True).segments(record())


def test_record_text_of_a_chat_run_lists_the_turns():
    """experiments.common.record_text (data-map tables) shows a chat run's records as role: text, no tokenizer."""
    from experiments.common import record_text

    rec = record(TURNS[1:3], context="Some context.", schema="dolly")
    assert record_text(rec, Template(chat=True)) == ("user: What is the capital of France? assistant: Paris is the "
                                                     "capital of France. context: Some context.")
