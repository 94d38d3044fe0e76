"""experiments/tiny_data.py: the max_length rule, the record selection, the pretraining text and the REPORT.md
header, against hand computations and an independent numpy formulation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from experiments import reproduce, tiny_data
from mbc_jax import UserError


def _quantile_by_sorting(lengths, q: float) -> int:
    """The smallest length that at least a share q of the records fit in."""
    s = sorted(lengths)
    return s[math.ceil(q * len(s)) - 1]


@pytest.mark.parametrize("seed", range(5))
def test_max_length_is_the_rounded_quantile(seed):
    lengths = np.random.default_rng(seed).integers(20, 900, size=int(37 + 50 * seed)).tolist()
    q = _quantile_by_sorting(lengths, 0.9)
    want = min(max(-(-q // 64) * 64, 128), 512)
    assert tiny_data.choose_max_length(lengths) == want
    assert sum(n <= want for n in lengths) >= 0.9 * len(lengths) or want == 512


def test_max_length_by_hand():
    assert tiny_data.choose_max_length(list(range(1, 101))) == 128  # q90 = 90 -> 128 (the floor)
    assert tiny_data.choose_max_length(list(range(1, 301))) == 320  # q90 = 270 -> 320
    assert tiny_data.choose_max_length([100] * 9 + [5000]) == 128  # 9 of 10 fit in 100
    assert tiny_data.choose_max_length([100] * 8 + [5000] * 2) == 512  # q90 = 5000 -> the ceiling
    assert tiny_data.choose_max_length([300] * 10, hi=256) == 256  # a model's positions cap it
    with pytest.raises(UserError):
        tiny_data.choose_max_length([])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_selection_against_numpy(seed):
    lengths = np.random.default_rng(100 + seed).integers(10, 700, size=400)
    max_length, n_train, n_valid = 300, 50, 12
    sel = tiny_data.select(lengths.tolist(), max_length, n_train, n_valid, seed=seed)
    perm = np.random.default_rng(seed).permutation(len(lengths))
    fits = lengths[perm] <= max_length
    stop = int(np.searchsorted(np.cumsum(fits), n_train + n_valid)) + 1  # prefix of the order that was scanned
    assert sel.train == perm[fits][:n_train].tolist()
    assert sel.valid == perm[fits][n_train:n_train + n_valid].tolist()
    assert len(sel.dropped) == int((~fits[:stop]).sum()) and set(sel.dropped) == set(perm[:stop][~fits[:stop]])
    held = sel.held_out()
    assert len(held) == 400 - n_train - n_valid and not set(held) & (set(sel.train) | set(sel.valid))
    assert set(sel.dropped) <= set(held) and held == sorted(held)


def test_selection_runs_out():
    sel = tiny_data.select([500, 10, 600, 20], 100, n_train=2, n_valid=2)
    assert len(sel.train) == 2 and sel.valid == [] and sorted(sel.dropped) == [0, 2]


@pytest.mark.parametrize("seed", [0, 3])
def test_stratified_selection_against_a_per_category_scan(seed):
    """Equal shares per category (the remainder to the first categories in sorted order), each category's records
    taken in the seeded order among those that fit; a full category's records are skipped, not counted dropped."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, 700, size=600)
    cats = rng.choice(["b", "a", "c"], size=600, p=[0.6, 0.3, 0.1]).tolist()
    sel = tiny_data.select(lengths.tolist(), 300, 10, 4, seed=seed, categories=cats)
    perm = np.random.default_rng(seed).permutation(600).tolist()
    for c, (nt, nv) in {"a": (4, 2), "b": (3, 1), "c": (3, 1)}.items():
        fit = [i for i in perm if cats[i] == c and lengths[i] <= 300]
        assert [i for i in sel.train if cats[i] == c] == fit[:nt]
        assert [i for i in sel.valid if cats[i] == c] == fit[nt:nt + nv]
    assert len(sel.train) == 10 and len(sel.valid) == 4
    assert all(lengths[i] > 300 for i in sel.dropped)
    last = max(perm.index(i) for i in sel.train + sel.valid)
    scanned_long = [i for i in perm[:last + 1] if lengths[i] > 300]
    assert set(sel.dropped) <= set(scanned_long)  # only records met before their category filled up


def test_stratified_selection_without_categories_is_the_plain_rule():
    lengths = np.random.default_rng(5).integers(10, 700, size=300).tolist()
    plain = tiny_data.select(lengths, 300, 40, 10, seed=2)
    one = tiny_data.select(lengths, 300, 40, 10, seed=2, categories=["x"] * 300)
    assert (plain.train, plain.valid, plain.dropped) == (one.train, one.valid, one.dropped)


def test_plain_text_of_a_record():
    rec = SimpleNamespace(text=None, turns=[("user", "Why? "), ("assistant", "Because.")], context="Some context.")
    assert tiny_data.plain_text(rec, "<E>") == "Why?\n\nSome context.\n\nBecause.<E>"
    rec = SimpleNamespace(text=None, turns=[("user", "Q"), ("assistant", "A")], context="")
    assert tiny_data.plain_text(rec, "") == "Q\n\nA"
    assert tiny_data.plain_text(SimpleNamespace(text="doc", turns=[], context=""), "<E>") == "doc<E>"


def _prepared(**kw) -> tiny_data.Prepared:
    facts = dict(
        data="/x/dolly.jsonl", sha256="ab" * 32, records=15011, schema="dolly", tokenizer="a byte-level BPE",
        vocab_size=4096, lengths={"mean": 240.6, "median": 142, "p90": 514, "max": 8300}, max_length=512,
        n_train=320, n_valid=80, dropped=41, truncated=0, responses_lost=0,
        categories={"open_qa": [3742, 90], "summarization": [1188, 10]}, train_path="/o/data/train.jsonl",
        valid_path="/o/data/valid.jsonl", model="/cache/base",
        pretrain={"corpus_documents": 14611, "corpus_truncated": 1498, "spec": {"steps": 400, "batch_size": 16,
                  "learning_rate": 0.003}, "first_loss": 8.3, "final_loss": 4.25, "epochs": 0.44,
                  "wall_seconds": 300.0})
    return tiny_data.Prepared(**{**facts, **kw})


def test_header_describes_the_data_and_model(tmp_path):
    p = _prepared()
    h = p.header()
    for want in ("`dolly.jsonl` (15,011 records, dolly schema", "not the demo's generated suite",
                 "Tokenizer (4,096 tokens): a byte-level BPE", "max_length 512", "41 records met on the way were "
                 "dropped for length, 0 truncated, 0 responses lost", "open_qa 90/3742", "summarization 10/1188",
                 "14,611 other records", "1498 longer than 512 tokens truncated", "400 steps of 16 documents",
                 "loss 8.300 -> 4.250", "576 positions", "familiarity AUC", "world judge"):
        assert want in h, want
    assert p.overrides() == ["data=/o/data/train.jsonl", "val_data=/o/data/valid.jsonl", "model=/cache/base",
                             "max_length=512"]
    cuts = p.cuts()
    assert "dropped for length: 41; truncated: 0; responses lost: 0" in cuts and "1498 truncated" in cuts
    given = _prepared(model="EleutherAI/gpt-neo-125m", pretrain=None).header()
    assert "`EleutherAI/gpt-neo-125m` (--model, or the scale's own)" in given and "pretrained from random" not in given
    report = reproduce.write_report(tmp_path, "tiny", reproduce.SCALES["tiny"], {}, [], [], [], header=h)
    text = report.read_text()
    assert text.startswith("# MBC reproduction report (tiny scale)\n\n## Setup\n\n" + h)  # no claims table given
    assert "generated suite;" not in text and reproduce.SCALES["tiny"].note not in text


def test_needs_a_local_jsonl_file(tmp_path):
    with pytest.raises(UserError, match="local .jsonl"):
        tiny_data.prepare(str(tmp_path / "missing.jsonl"), tmp_path, 10)
    (tmp_path / "d.parquet").write_bytes(b"")
    with pytest.raises(UserError, match="local .jsonl"):
        tiny_data.prepare(str(tmp_path / "d.parquet"), tmp_path, 10)
    (tmp_path / "d.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match="--tokenizer with --model"):
        tiny_data.prepare(str(tmp_path / "d.jsonl"), tmp_path, 10, tokenizer="t", model="m")


def test_reproduce_tokenizer_needs_data_at_the_tiny_scale(tmp_path, capsys):
    assert reproduce.main(["--scale", "demo", "--tokenizer", "gpt2", "--out", str(tmp_path)]) != 0
    assert "--tokenizer: only used with --data at the tiny scale" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any training
