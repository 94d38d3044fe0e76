"""Scorer: HF fixture record metrics, one compile per shape, vocabulary chunking (packed and
sharded layouts: integration/test_scoring_layouts.py; the CLI: integration/test_cli_score.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import FIXTURE_MODELS, FIXTURES, assert_matches_reference, fixture_examples, random_examples
from mbc_jax.models import load_model
from mbc_jax.scoring import Scorer


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_fixture_record_metrics(name, shared_dir):
    model = load_model(str(FIXTURES / name))
    examples, ref = fixture_examples(name)
    scores = Scorer(model.module, model.mesh, seq_len=64, tokens_per_batch=128)(model.params, examples)
    cols = {k: [r[k] for r in scores.rows(examples)] for k in
            ("perplexity", "response_perplexity", "exact_match", "response_exact_match", "entropy")}
    assert_matches_reference(lambda k: np.asarray(cols[k]), ref)
    real_targets = ref["attention_mask"][:, 1:].sum(1)
    np.testing.assert_array_equal(scores.sums["tokens"], real_targets)


def test_one_compile_per_shape(tiny_model):
    examples = random_examples(60, 96, seed=2)
    scorer = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=128)
    batches = scorer.batches(examples)
    assert len(batches) > 3
    scorer(tiny_model.params, examples, batches)
    scorer(tiny_model.params, examples, batches)
    assert len(scorer._compiled) == 1


def test_vocab_chunking_matches_single_block(tiny_model):
    from mbc_jax.scoring import token_stats

    h = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 32))
    w = jax.random.normal(jax.random.PRNGKey(1), (32, 97))
    y = jax.random.randint(jax.random.PRNGKey(2), (3, 10), 0, 97)
    one = token_stats(h, w.T, y, token_chunk=30, vocab_chunk=1000)
    many = token_stats(h, w.T, y, token_chunk=7, vocab_chunk=10)  # uneven chunks, padded vocab
    logits = np.asarray(h @ w, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    p = np.exp(logits - lse[..., None])
    want = {"nll": lse - np.take_along_axis(logits, np.asarray(y)[..., None], -1)[..., 0],
            "match": (logits.argmax(-1) == np.asarray(y)).astype(float),
            "entropy": lse - (p * logits).sum(-1)}
    for k, v in want.items():
        np.testing.assert_allclose(one[k], v, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(many[k], v, rtol=1e-5, atol=1e-5)


def test_pooled_ratio_weighs_records_by_their_targets():
    from mbc_jax.scoring import Scores

    sums = {"tokens": np.array([2.0, 8.0, 0.0]), "match": np.array([2.0, 2.0, 0.0]),
            "response_tokens": np.array([0.0, 0.0, 0.0]), "response_match": np.array([0.0, 0.0, 0.0])}
    scores = Scores(sums)
    assert scores.pooled("match") == 4.0 / 10.0  # Eq. 1: not the per-record mean (1.0 + 0.25) / 2
    np.testing.assert_allclose(np.nanmean(scores.exact_match()), 0.625)
    assert scores.pooled("match", response=True) == 0.0  # no targets: 0 / max(0, 1)
