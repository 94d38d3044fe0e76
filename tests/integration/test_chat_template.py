"""`--template chat` / `template: chat` through the CLI on the demo's tiny model (random weights) whose tokenizer
is given a hand-written ChatML-like chat template: score's response tokens, generate's prompts, a two-step
train run, and the error for a tokenizer without a chat template."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from conftest import _write
from mbc_jax.cli import main
from mbc_jax.data import Template, load_records, tokenize

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.role == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_dirs(tmp_path_factory):
    """(the demo's model folder (random weights, its 2048-token byte-level BPE) with CHATML as its tokenizer's
    chat template, the same folder without one)."""
    from mbc_jax.demo import materialize

    root = tmp_path_factory.mktemp("chat_demo")
    plain = materialize(root / "demo", num_records=16, seed=0, num_valid=0)["model"]
    with_chat = root / "model"
    shutil.copytree(plain, with_chat)
    cfg = json.loads((with_chat / "tokenizer_config.json").read_text())
    assert "chat_template" not in cfg and not list(plain.glob("chat_template*"))
    (with_chat / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": CHATML}))
    return with_chat, plain


def rows(n: int = 4) -> list[dict]:
    return [{"id": f"r{i}", "category": "qa", "messages": [
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"What is {i} plus {i}?"},
        {"role": "assistant", "content": f"It is {2 * i}."}, {"role": "user", "content": "And doubled?"},
        {"role": "assistant", "content": f"That is {4 * i}."}]} for i in range(n)]


def test_train_export_score_generate_with_the_chat_template(tmp_path, chat_dirs, capsys):
    """One chain (the suite's time is short): train two steps with template: chat, export, then score and
    generate the export with --template chat."""
    from transformers import AutoTokenizer

    model_dir, plain = chat_dirs
    data = _write(tmp_path / "chat.jsonl", rows())
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert tok.chat_template == CHATML
    records, _ = load_records(data)
    examples, _ = tokenize(records, tok, Template(chat=True), max_length=256)
    assert not any(ex.truncated for ex in examples)
    for ex, rec in zip(examples, records):  # the response tokens: each assistant text and its EOS
        answers = [c for role, c in rec.turns if role == "assistant"]
        assert ex.response_tokens == sum(len(tok(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)

    # train: records.csv holds the chat rendering's counts; the run's tokenizer keeps the template
    run = tmp_path / "run"
    assert main(["train", f"out={run}", f"model={model_dir}", f"data={data}", "template=chat", "steps=2",
                 "batch_size=2", "max_length=256", "val_fraction=0", "mesh=1,1,1", "sampler=uniform",
                 "checkpoint_every=2", "log_every=1"]) == 0
    with open(run / "records.csv") as f:
        saved = list(csv.DictReader(f))
    assert [int(r["response_tokens"]) for r in saved] == [ex.response_tokens for ex in examples]
    assert [int(r["tokens"]) for r in saved] == [len(ex) for ex in examples]
    from mbc_jax.run_folder import RunFolder

    folder = RunFolder.open(run)
    assert folder.template() == Template(chat=True)
    _, again = folder.examples("train", folder.tokenizer())  # re-tokenized as the run did, counts checked
    assert [e.response_mask.tolist() for e in again] == [e.response_mask.tolist() for e in examples]
    exported = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(exported)]) == 0

    # score: the response tokens are the assistant turns, as tokenize renders them
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(exported), "--data", str(data), "--out", str(out), "--template", "chat",
                 "--max-length", "256"]) == 0
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["response_tokens"] for r in scored] == [ex.response_tokens for ex in examples]
    assert [r["tokens"] for r in scored] == [len(ex) - 1 for ex in examples]  # targets

    # generate: the prompt is the turns before the last answer with the generation prompt
    out = tmp_path / "answers.jsonl"
    assert main(["generate", "--model", str(exported), "--data", str(data), "--out", str(out), "--template", "chat",
                 "--max-new-tokens", "3", "--seed", "0"]) == 0
    for line, rec in zip(out.read_text().splitlines(), records):
        x = json.loads(line)
        assert x["prompt"] == tok.apply_chat_template(
            [{"role": r, "content": c} for r, c in rec.turns[:-1]], tokenize=False, add_generation_prompt=True)
        assert x["prompt"].endswith("<|im_start|>assistant\n") and x["reference"] == rec.turns[-1][1]
        assert x["prompt_tokens"] == len(tok(x["prompt"], add_special_tokens=False)["input_ids"])
    assert json.loads((tmp_path / "answers.meta.json").read_text())["template"]["chat"] is True
    capsys.readouterr()

    # a tokenizer without a chat template: one line saying so
    code = main(["train", f"out={tmp_path / 'run2'}", f"model={plain}", f"data={data}", "template=chat",
                 "steps=1", "batch_size=2", "max_length=256", "mesh=1,1,1"])
    err = capsys.readouterr().err
    assert code == 2 and "has none" in err and "Human:/Assistant:" in err and "Traceback" not in err
