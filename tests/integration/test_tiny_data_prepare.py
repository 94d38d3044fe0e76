"""experiments/tiny_data.py end to end on 60 real Dolly records: the tokenizer fit, the selection and a 2-step base
pretrain; the cut counts are checked against an independent count (the saved tokenizer.json, strings rendered by
hand, numpy for the order)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from experiments import tiny_data
from mbc_jax.demo import base
from tests.conftest import SHARED

DOLLY = SHARED / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"
TINY = dataclasses.replace(base.PRETRAIN, steps=2, batch_size=8, warmup_steps=1)


def test_prepare_dolly_sample(tmp_path):
    if not DOLLY.is_file():
        pytest.skip(f"{DOLLY} is not present")
    from tokenizers import Tokenizer

    lines = DOLLY.read_text(encoding="utf-8").splitlines()[::250][:60]  # every category, as the file is sorted
    data = tmp_path / "dolly60.jsonl"
    data.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    logs: list[str] = []
    prep = tiny_data.prepare(str(data), tmp_path / "out", n_train=20, n_valid=5, vocab_size=512, spec=TINY,
                             log=logs.append)

    # independent count: the Dolly template by hand, the saved tokenizer.json, EOS = 1 token
    folder = Path(prep.model)  # the cached base
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    recs = [json.loads(x) for x in lines]

    def n_tokens(s: str) -> int:
        return len(tok.encode(s, add_special_tokens=False).ids)

    lengths = []
    for r in recs:
        prompt = "Human: " + r["instruction"] + (f"\n\n{r['context']}" if r["context"] else "") + "\n\nAssistant:"
        lengths.append(n_tokens(prompt) + n_tokens(" " + r["response"]) + 1)
    q = sorted(lengths)[math.ceil(0.9 * 60) - 1]
    max_length = min(max(-(-q // 64) * 64, 128), 512)
    assert prep.max_length == max_length and prep.lengths["max"] == max(lengths)
    order = np.random.default_rng(0).permutation(60)
    fits = np.asarray(lengths)[order] <= max_length
    stop = int(np.searchsorted(np.cumsum(fits), 25)) + 1
    assert prep.dropped == int((~fits[:stop]).sum())
    assert (prep.n_train, prep.n_valid, prep.truncated, prep.responses_lost) == (20, 5, 0, 0)
    picked = order[fits]
    assert (tmp_path / "out" / "data" / "train.jsonl").read_text().splitlines() == [lines[i] for i in picked[:20]]
    assert (tmp_path / "out" / "data" / "valid.jsonl").read_text().splitlines() == [lines[i] for i in picked[20:25]]

    # the base: pretrained on the 35 other records as plain text, positions max_length + 64
    assert base.is_complete(folder)
    info = json.loads((folder / "pretrain.json").read_text())
    held = sorted(set(range(60)) - set(picked[:25].tolist()))
    docs = ["\n\n".join(t.strip() for t in (recs[i]["instruction"], recs[i]["context"], recs[i]["response"])
                        if t.strip()) for i in held]
    assert info["corpus_documents"] == 35 and info["spec"]["steps"] == 2 and math.isfinite(info["final_loss"])
    assert info["corpus_truncated"] == sum(n_tokens(d) + 1 > max_length for d in docs)
    config = json.loads((folder / "config.json").read_text())
    assert config["max_position_embeddings"] == max_length + 64 and config["vocab_size"] == tok.get_vocab_size()
    assert any("first use" in m for m in logs) and prep.cuts() in logs
    logs.clear()
    again = tiny_data.prepare(str(data), tmp_path / "out2", n_train=20, n_valid=5, vocab_size=512, spec=TINY,
                              log=logs.append)
    assert again == dataclasses.replace(prep, train_path=again.train_path, valid_path=again.valid_path)
    assert logs == [again.cuts()]  # cached: nothing rebuilt
