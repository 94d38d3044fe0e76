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
    one = token_stats(h, w.T, y, token_chunk=30, vocab_chunk=1000, moments=True)
    many = token_stats(h, w.T, y, token_chunk=7, vocab_chunk=10, moments=True)  # uneven chunks, padded vocab
    logits = np.asarray(h @ w, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    p = np.exp(logits - lse[..., None])
    logp = logits - lse[..., None]
    mu = (p * logp).sum(-1)
    sigma = np.sqrt((p * logp * logp).sum(-1) - mu * mu)
    want = {"nll": lse - np.take_along_axis(logits, np.asarray(y)[..., None], -1)[..., 0],
            "match": (logits.argmax(-1) == np.asarray(y)).astype(float),
            "entropy": lse - (p * logits).sum(-1),
            "min_k_pp": (np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0] - mu) / sigma}
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


def _record(parts: list[tuple[np.ndarray, bool, bool]], index: int):
    """An Example from (tokens, is_response, ends_with_eos) parts, and where its EOS tokens are."""
    from mbc_jax.data import Example

    ids = np.concatenate([p[0] for p in parts]).astype(np.int32)
    mask = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
    eos_at = np.concatenate([np.arange(len(p[0])) == len(p[0]) - 1 if p[2] else np.zeros(len(p[0]), bool)
                             for p in parts])
    return Example(index, f"r{index}", "", ids, mask), eos_at


def test_no_eos_exact_match_and_response_entropy_against_numpy(tiny_model):
    """Responses end with the EOS token the template appends (one per response, none when truncation cut
    it); numpy scores the response targets minus the known EOS positions. The EOS id is the model's
    own argmax after record 0's response, so that EOS target is matched and leaving it out lowers
    the record's score."""
    vocab = 96
    for seed in range(100):
        rng = np.random.default_rng(seed)
        head = rng.integers(0, vocab, 11)  # record 0: 5 prompt + 6 response tokens, then EOS
        eos = int(np.asarray(tiny_model.apply(head[None]))[0, -1].argmax())
        if eos not in head[5:]:
            break

    def draw(n):  # tokens that are never the EOS id
        x = rng.integers(0, vocab - 1, n)
        return np.where(x >= eos, x + 1, x)

    def resp(n):
        return np.append(draw(n), eos)

    records = [
        [(head[:5], False, False), (np.append(head[5:], eos), True, True)],
        [(draw(4), False, False), (resp(7), True, True), (draw(3), False, False), (resp(2), True, True)],  # two turns
        [(draw(6), False, False), (draw(5), True, False)],  # truncated: its EOS was cut away
        [(draw(5), False, False), (np.array([eos]), True, True)],  # the response is the EOS alone
    ]
    examples, eos_at = zip(*(_record(parts, i) for i, parts in enumerate(records)))
    scores = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=128, eos_id=eos)(
        tiny_model.params, list(examples))
    rows = list(scores.rows(examples))
    matched = kept = 0
    for ex, at, row in zip(examples, eos_at, rows):
        logits = np.asarray(tiny_model.apply(ex.input_ids[None]), np.float64)[0, :-1]
        top = logits.max(-1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
        ent = lse - (np.exp(logits - lse[:, None]) * logits).sum(-1)
        match = logits.argmax(-1) == ex.input_ids[1:]
        resp_t = ex.response_mask[1:]
        keep = resp_t & ~at[1:]  # response targets other than the appended EOS
        assert row["response_tokens"] == resp_t.sum() and row["response_tokens_no_eos"] == keep.sum()
        assert row["response_tokens"] - row["response_tokens_no_eos"] == at.sum()
        assert row["response_exact_match"] == pytest.approx(match[resp_t].mean())
        if keep.any():
            assert row["response_exact_match_no_eos"] == pytest.approx(match[keep].mean())
        else:
            assert row["response_exact_match_no_eos"] is None
        assert row["response_entropy"] == pytest.approx(ent[resp_t].mean(), rel=1e-5)
        assert row["entropy"] == pytest.approx(ent.mean(), rel=1e-5)
        matched, kept = matched + match[keep].sum(), kept + keep.sum()
        if ex.index == 0:
            assert match[-1] and at[-1]  # record 0's EOS target is matched: leaving it out lowers its score
            assert row["response_exact_match_no_eos"] < row["response_exact_match"]
    assert [r["response_tokens"] - r["response_tokens_no_eos"] for r in rows] == [1, 2, 0, 1]
    assert scores.pooled("match", response=True, no_eos=True) == pytest.approx(matched / kept)  # Eq. 1, pooled


def test_pooled_no_eos_and_scorer_without_eos_id(tiny_model):
    from mbc_jax.scoring import Scores

    sums = {"response_no_eos_tokens": np.array([3.0, 1.0, 0.0]), "response_no_eos_match": np.array([1.0, 1.0, 0.0])}
    scores = Scores(sums)
    assert scores.pooled("match", response=True, no_eos=True) == 2.0 / 4.0
    np.testing.assert_allclose(scores.exact_match(True, no_eos=True), [1 / 3, 1.0, np.nan])
    with pytest.raises(ValueError, match="response targets only"):
        scores.pooled("match", no_eos=True)
    # without an EOS id nothing is left out: the no-EOS sums are the response sums
    examples = random_examples(12, 96, seed=4)
    got = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=128)(tiny_model.params, examples)
    np.testing.assert_array_equal(got.sums["response_no_eos_tokens"], got.sums["response_tokens"])
    np.testing.assert_array_equal(got.sums["response_no_eos_match"], got.sums["response_match"])


# ----------------------------------------------------------------------------- membership signals


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    """numpy: the mean of the ceil(k * n) lowest values (nan for none)."""
    if not len(values):
        return np.nan
    keep = -(-len(values) * round(k * 10000) // 10000)  # ceil(k * n) in integers, as the scorer forms it
    return float(np.sort(values)[:keep].mean())


def membership_oracle(logits: np.ndarray, ids: np.ndarray, response_mask: np.ndarray, k: float) -> dict:
    """One record's Min-K% and Min-K%++ over its full and response targets, in float64 from full logits
    [n - 1, V] (position t predicts ids[t + 1])."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    p = np.exp(logp)
    mu = (p * logp).sum(-1)
    sigma = np.sqrt(np.maximum((p * logp * logp).sum(-1) - mu * mu, 0))
    tok = logp[np.arange(len(ids) - 1), ids[1:]]
    zscore = (tok - mu) / np.maximum(sigma, 1e-6)
    resp = response_mask[1:]
    return {"min_k": _lowest_k_mean(tok, k), "response_min_k": _lowest_k_mean(tok[resp], k),
            "min_k_pp": _lowest_k_mean(zscore, k), "response_min_k_pp": _lowest_k_mean(zscore[resp], k),
            "tokens": len(tok), "response_tokens": int(resp.sum())}


@pytest.mark.parametrize("name", FIXTURE_MODELS)
@pytest.mark.parametrize("k", [0.2, 0.5])
def test_min_k_and_min_k_pp_match_numpy_on_the_hf_logits(name, k):
    """Per record, against numpy over the HF PyTorch logits of the fixture (packed 128-token batches: several
    records per row, so the per-segment ranking is exercised)."""
    model = load_model(str(FIXTURES / name))
    examples, ref = fixture_examples(name)
    scorer = Scorer(model.module, model.mesh, seq_len=64, tokens_per_batch=128, min_k=k)
    assert any((b.record_index >= 0).sum(1).max() > 1 for b in scorer.batches(examples))
    rows = list(scorer(model.params, examples).rows(examples))
    for ex, row in zip(examples, rows):
        n = len(ex)
        want = membership_oracle(ref["logits"][ex.index, :n - 1], ex.input_ids, ex.response_mask, k)
        for col in ("min_k", "response_min_k", "min_k_pp", "response_min_k_pp"):  # measured: within 1e-6
            assert row[col] == pytest.approx(want[col], rel=1e-5, abs=1e-5), (ex.index, col)
        assert row["tokens"] == want["tokens"] and row["response_tokens"] == want["response_tokens"]


def test_lowest_k_sums_per_segment_by_hand():
    """Two rows, three packed segments in row 0, positions outside the mask ignored; k = 0.5 keeps ceil(n / 2)."""
    import jax.numpy as jnp

    from mbc_jax.scoring import lowest_k_sums

    values = jnp.array([[5.0, -1.0, 2.0, 7.0, -3.0, 4.0, 9.0, 0.0],
                        [1.0, 2.0, 3.0, -8.0, 0.5, 0.0, 0.0, 0.0]])
    seg = jnp.array([[1, 1, 1, 2, 2, 3, 3, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    mask = jnp.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0]], bool)  # row 1: -8 is not a target
    sums, count = lowest_k_sums(values, mask, seg, 3, 0.5)
    # row 0: seg 1 {5, -1, 2} keeps 2 -> -1 + 2; seg 2 {7, -3} keeps 1 -> -3; seg 3 {4} keeps 1 -> 4
    # row 1: seg 1 {1, 2, 3, 0.5} keeps 2 -> 0.5 + 1
    np.testing.assert_allclose(sums, [[1.0, -3.0, 4.0], [1.5, 0.0, 0.0]])
    np.testing.assert_array_equal(count, [[2, 1, 1], [2, 0, 0]])
    sums, count = lowest_k_sums(values, mask, seg, 3, 0.2)  # ceil(0.2 n): one token whenever n >= 1
    np.testing.assert_allclose(sums, [[-1.0, -3.0, 4.0], [0.5, 0.0, 0.0]])
    np.testing.assert_array_equal(count, [[1, 1, 1], [1, 0, 0]])


def test_zlib_ratio_is_the_mean_nll_over_the_compressed_decoded_text(tiny_model):
    import zlib

    class Chars:  # a tokenizer whose token i is the character chr(97 + i % 26)
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(97 + i % 26) for i in ids)

    examples = random_examples(6, 96, seed=5)
    examples[2].response_mask[:] = False  # no response: its response zlib ratio is None
    scores = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=128, tokenizer=Chars())(
        tiny_model.params, examples)
    for ex, row in zip(examples, scores.rows(examples)):
        text = "".join(chr(97 + i % 26) for i in ex.input_ids)
        resp = "".join(chr(97 + i % 26) for i in ex.input_ids[ex.response_mask])
        assert row["zlib_ratio"] == pytest.approx(row["mean_nll"] / len(zlib.compress(text.encode())), rel=1e-12)
        if resp:
            assert row["response_zlib_ratio"] == pytest.approx(
                row["response_mean_nll"] / len(zlib.compress(resp.encode())), rel=1e-12)
        else:
            assert row["response_zlib_ratio"] is None
    # without a tokenizer, or with the signals off, the columns are there and empty
    plain = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=128, membership=False)(
        tiny_model.params, examples)
    row = next(plain.rows(examples))
    assert row["zlib_ratio"] is None and row["min_k"] is None and row["min_k_pp"] is None
    assert "min_k" not in plain.sums
