"""mbc_jax/demo/: the generated suite (categories, schema, determinism, splits, rules, vocabulary),
the tiny GPT-Neo config, and the description (the materialized folder and its tokenizer:
integration/test_demo_materialize.py)."""

from __future__ import annotations

import collections
import json

import pytest

from conftest import COUNTS_600
from mbc_jax import UserError
from mbc_jax import demo as D

# ---------------------------------------------------------------- the suite


def test_default_category_counts(suite):
    counts = collections.Counter(r["category"] for r in suite)
    assert dict(counts) == COUNTS_600
    assert D.category_counts(600) == COUNTS_600
    assert len(suite) == D.DEFAULT_NUM_RECORDS == 600
    assert min(counts.values()) >= 40 and len(set(counts.values())) >= 5  # unequal, none tiny


def test_category_counts_other_sizes():
    for n in (8, 50, 123, 1000, 2500):
        counts = D.category_counts(n)
        assert sum(counts.values()) == n and min(counts.values()) >= 1
        assert list(counts) == [c.name for c in D.CATEGORIES]
    assert D.category_counts(1000)["open_qa"] == 200
    with pytest.raises(D.DemoError, match="at least 8"):
        D.category_counts(7)
    with pytest.raises(UserError, match="distinct 'open_qa' prompts"):  # the made-up world is finite
        D.generate_suite(6000)


def test_schema_ids_and_unique_prompts(suite):
    for r in suite:
        assert list(r) == ["id", "instruction", "context", "response", "category", "familiarity"]
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"] and r["response"] and r["response"] == r["response"].strip()
    assert [r["id"] for r in suite] == [f"train-{i:05d}" for i in range(600)]
    assert len({(r["instruction"], r["context"]) for r in suite}) == 600
    with_context = collections.Counter(r["category"] for r in suite if r["context"])
    assert set(with_context) == {"classification", "closed_qa", "rewriting", "information_extraction",
                                 "summarization"}
    assert with_context["closed_qa"] == 80 and with_context["summarization"] == 50


def test_deterministic_and_seed_dependent(suite):
    assert D.generate_suite(600, 0) == suite
    other = D.generate_suite(600, 1)
    assert other != suite
    same = {(r["instruction"], r["context"], r["response"]) for r in suite}
    shared = sum((r["instruction"], r["context"], r["response"]) in same for r in other)
    assert shared < 60  # < 10%: only a few short prompts (parity, animal or plant) can coincide
    # the made-up world's facts depend on the seed: the capital of a country changes
    capitals0 = {r["instruction"]: r["response"] for r in suite if "capital" in r["instruction"]}
    capitals1 = {r["instruction"]: r["response"] for r in other if "capital" in r["instruction"]}
    common = set(capitals0) & set(capitals1)
    assert common and sum(capitals0[q] != capitals1[q] for q in common) >= len(common) - 1


def test_each_category_has_its_own_stream(suite):
    small = D.generate_suite(300, 0)
    key = lambda r: (r["instruction"], r["context"], r["response"], r["category"])  # noqa: E731
    assert {key(r) for r in small} <= {key(r) for r in suite}


def test_valid_split_is_disjoint(suite):
    valid = D.generate_suite(80, 0, split="valid", exclude=suite)
    assert len(valid) == 80 and valid[0]["id"] == "valid-00000"
    assert collections.Counter(r["category"] for r in valid) == collections.Counter(D.category_counts(80))
    train_prompts = {(r["instruction"], r["context"]) for r in suite}
    assert not any((r["instruction"], r["context"]) in train_prompts for r in valid)
    # same world: a country's capital is the same fact in both splits
    fact = lambda r: r["response"] if r["response"].startswith("The capital of") else None  # noqa: E731
    capital = {r["response"].split()[3]: r["response"] for r in suite if fact(r)}
    checked = [r for r in valid if fact(r) and r["response"].split()[3] in capital]
    assert all(capital[r["response"].split()[3]] == r["response"] for r in checked)
    with pytest.raises(ValueError, match="split"):
        D.generate_suite(10, 0, split="test")


def test_deterministic_rules_hold(suite):
    for r in suite:
        if r["instruction"] == "Reverse the order of the following words.":
            assert r["response"].split(" ") == r["context"].split(" ")[::-1]
        elif r["instruction"] == "Sort these words in alphabetical order.":
            assert r["response"].split(", ") == sorted(r["context"].split(", "))
        elif r["category"] == "classification" and " even " in f" {r['instruction']} ":
            n = int(next(w for w in r["instruction"].split() if w.isdigit()))
            assert r["response"] == ("even" if n % 2 == 0 else "odd")
        elif r["category"] == "closed_qa":
            # the answer's key word comes from the context
            assert r["response"].rstrip(".").split()[-1] in r["context"]


def test_vocabulary_is_small(suite):
    import re

    words = set()
    for r in suite:
        for field in ("instruction", "context", "response"):
            words.update(re.findall(r"[A-Za-z]+", r[field]))
    assert 800 <= len(words) <= 2000


# ---------------------------------------------------------------- model config


def test_model_config_matches_transformers(tmp_path):
    from transformers import GPTNeoConfig

    cfg = D.model_config()
    GPTNeoConfig.from_dict(dict(cfg)).save_pretrained(str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())
    written.pop("transformers_version")
    # field for field what transformers writes; transformers 4.x leaves out a field at its default value
    # (tie_word_embeddings: true), which it reads back as the same value
    left_out = {k: cfg[k] for k in cfg.keys() - written.keys()}
    assert written == {k: v for k, v in cfg.items() if k not in left_out}
    assert all(getattr(GPTNeoConfig(), k) == v for k, v in left_out.items()), left_out
    assert cfg["attention_layers"] == ["global", "local", "global", "local"] and cfg["num_layers"] == 4
    shape = (cfg["hidden_size"], cfg["num_heads"], cfg["window_size"], cfg["max_position_embeddings"])
    assert shape == (128, 4, 32, 256) and cfg["vocab_size"] == 2048
    h, v, n = cfg["hidden_size"], cfg["vocab_size"], cfg["num_layers"]
    params = v * h + 256 * h + n * (4 * h * h + h + 8 * h * h + 5 * h + 4 * h) + 2 * h
    assert params == 1_086_720  # tied LM head: counted once


def test_description_is_honest():
    text = D.DESCRIPTION.lower()
    for phrase in ("synthetic", "generated", "not real human data", "600", "gpt-neo"):
        assert phrase in text
    assert "nothing here is real human data" in D.__doc__.lower()
