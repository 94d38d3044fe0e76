"""Exact memorization over many records: Eq. 1 pools the targets; the macro mean weighs records equally."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.common import macro_exact_match, pooled_exact_match
from mbc_jax.commands.train import compare
from mbc_jax.train import _eval_line


def _table(seed: int = 0, n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 400, n)
    response_tokens = rng.integers(0, tokens)  # some records have none
    matched = rng.integers(0, tokens + 1)
    response_matched = rng.integers(0, response_tokens + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rem = np.where(response_tokens > 0, response_matched / np.maximum(response_tokens, 1), np.nan)
    return {"tokens": tokens, "response_tokens": response_tokens, "exact_match": matched / tokens,
            "response_exact_match": rem, "matched": matched, "response_matched": response_matched}


def test_pooled_is_matched_targets_over_targets():
    t = _table()
    assert (t["response_tokens"] == 0).any()
    assert pooled_exact_match(t) == pytest.approx(t["matched"].sum() / t["tokens"].sum(), rel=1e-12)
    has = t["response_tokens"] > 0
    want = (t["response_exact_match"][has] * t["response_tokens"][has]).sum() / t["response_tokens"][has].sum()
    assert pooled_exact_match(t, response=True) == pytest.approx(want, rel=1e-12)
    assert pooled_exact_match(t, response=True) == pytest.approx(
        t["response_matched"].sum() / t["response_tokens"].sum(), rel=1e-12)


def test_macro_is_the_per_record_nanmean():
    t = _table(1)
    assert macro_exact_match(t) == pytest.approx(np.mean(t["exact_match"]), rel=1e-12)
    assert macro_exact_match(t, response=True) == pytest.approx(np.nanmean(t["response_exact_match"]), rel=1e-12)


def test_pooled_and_macro_differ_when_long_records_differ():
    t = {"tokens": np.array([1, 99]), "exact_match": np.array([1.0, 0.0]),
         "response_tokens": np.array([0, 0]), "response_exact_match": np.array([np.nan, np.nan])}
    assert pooled_exact_match(t) == pytest.approx(0.01)
    assert macro_exact_match(t) == pytest.approx(0.5)
    assert math.isnan(pooled_exact_match(t, response=True)) and math.isnan(macro_exact_match(t, response=True))


def test_eval_line_and_demo_table_name_both():
    ev = {"step": 4, "train_exact_match": 0.25, "train_response_exact_match": 0.5, "train_exact_match_macro": 0.125,
          "train_response_exact_match_macro": 0.375, "train_perplexity": 3.0}
    line = _eval_line(ev)
    assert "train exact match 0.250" in line and "response 0.500" in line and "per-record mean 0.125" in line
    summary = {"final": ev, "distinct_records_drawn": 3, "wall_seconds": 1.0, "run": "r"}
    out = compare({"mbc": summary})
    assert "Eq. 1, pooled" in out and "per-record mean" in out and "0.375" in out


def test_eval_line_and_demo_table_name_the_no_eos_ratio():
    ev = {"step": 4, "train_exact_match": 0.25, "train_response_exact_match": 0.5, "train_exact_match_macro": 0.125,
          "train_response_exact_match_macro": 0.375, "train_response_exact_match_no_eos": 0.4375,
          "train_perplexity": 3.0, "val_response_entropy": 1.5}
    assert "response 0.500, without EOS 0.438;" in _eval_line(ev)
    out = compare({"mbc": {"final": ev, "distinct_records_drawn": 3, "wall_seconds": 1.0, "run": "r"}})
    assert "without EOS (pooled)" in out and "0.438" in out and "val response entropy" in out and "1.500" in out
