"""experiments.extraction_memorization / attention_concentration / zeng, without a model: the metrics
against hand-computed values, where records are cut (long contexts), per-category summaries and the
change from step 0 against numpy, the attention statistics against numpy on random probabilities, the
correlations against scipy, and the steps (step 0 included by default)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import attention_concentration as att
from experiments import common, zeng
from experiments import extraction_memorization as E
from mbc_jax.data import Record, Template, tokenize


def test_metrics_on_hand_built_cases():
    ref = [5, 6, 7, 8, 9]
    cand = [5, 6, 1, 9]  # agrees on 2 leading tokens, then 9 (ref position 4), then stops (EOS)
    assert E.token_match_rate(cand, ref) == 2 / 5
    assert E.longest_common_prefix(cand, ref) == 2
    assert E.lcs_length(cand, ref) == 3  # 5 6 9
    p, r = 3 / 4, 3 / 5
    assert E.rouge_l_f1(cand, ref) == pytest.approx(2 * p * r / (p + r))  # 0.6667
    assert E.lcs_length([1, 2, 3, 4], [2, 4, 1, 3]) == 2
    assert E.lcs_length([1, 2, 3, 2, 4, 1, 2], [2, 4, 3, 1, 2, 1]) == 4  # ABCBDAB / BDCABA
    assert E.compare(ref, ref) == {"token_match_rate": 1.0, "longest_prefix": 5, "longest_prefix_fraction": 1.0,
                                   "rouge_l": 1.0, "exact_extraction": 1.0}
    none = E.compare([], ref)
    assert none["token_match_rate"] == 0.0 and none["rouge_l"] == 0.0 and none["exact_extraction"] == 0.0
    shifted = E.compare([0, 5, 6, 7, 8], ref)  # one token late: no positional match, LCS 4 of 5 each way
    assert shifted["token_match_rate"] == 0.0 and shifted["rouge_l"] == pytest.approx(0.8)
    longer = E.compare([5, 6, 7, 8, 9, 4, 4], ref)  # precision 5/7, recall 1: F1 = 10/12
    assert longer["rouge_l"] == pytest.approx(10 / 12) and longer["exact_extraction"] == 1.0
    assert [E.split_point(n, 0.5, None) for n in (2, 3, 10, 11)] == [1, 2, 5, 6]
    assert E.split_point(10, None, 32) == 9 and E.split_point(10, None, 0) == 1


class WordTokenizer:
    """One id per whitespace-separated word (stable within a test), EOS id 1."""

    eos_token_id = 1

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __len__(self):
        return 10_000

    def __call__(self, texts, add_special_tokens=True, verbose=False):
        return {"input_ids": [[self.vocab.setdefault(w, 2 + len(self.vocab)) for w in t.split()] for t in texts]}


def test_the_prefix_falls_inside_the_response_on_long_contexts():
    context = " ".join(f"ctx{i}" for i in range(300))  # a Wikipedia-sized context, never trained on
    rec = Record(0, "r0", "closed_qa", [("user", "Who wrote it?"), ("assistant", "a b c d e f g h i j")],
                 context=context)
    (ex,), _ = tokenize([rec], WordTokenizer(), Template(), max_length=1024)
    # "Human: Who wrote it?" + context + "Assistant:" = 4 + 300 + 1 words; then 10 response words + EOS
    r0 = 4 + 300 + 1
    assert E.response_span(ex.response_mask) == (r0, r0 + 11) and len(ex) == r0 + 11
    c = E.cut(ex, fraction=0.5, max_new_tokens=64)
    assert (c.prompt_tokens, c.response_tokens, c.prefix_tokens) == (r0, 11, 6)  # round(0.5 * 11) = 6
    assert c.prefix_end == r0 + 6 and c.end == r0 + 11  # the whole context is in the prompt, the cut in the response
    assert ex.response_mask[c.prefix_end - 1] and not ex.response_mask[r0 - 1]
    assert ex.input_ids[c.end - 1] == 1  # the EOS the model was trained to emit is compared too
    # the old cut at half of the whole record falls inside the context
    assert not ex.response_mask[E.split_point(len(ex), 0.5, None)]
    c = E.cut(ex, tokens=3, max_new_tokens=4)
    assert (c.prefix_end, c.end, c.prefix_tokens) == (r0 + 3, r0 + 7, 3)
    c = E.cut(ex, window="pythia")
    assert (c.prefix_end, c.end, c.prefix_tokens) == (32, 64, 32)  # Pythia: the start of the text
    # a truncated record whose response is gone, a one-token response, and a short record under pythia
    (cut_off,), _ = tokenize([rec], WordTokenizer(), Template(), max_length=100)
    assert E.cut(cut_off) == "no response token (truncated away)"
    assert E.cut(cut_off, window="pythia").prefix_end == 32
    one = Record(1, "r1", "x", [("user", "q"), ("assistant", "")])
    (ex1,), _ = tokenize([one], WordTokenizer(), Template())
    assert E.cut(ex1) == "response shorter than 2 tokens"
    assert E.cut(ex1, window="pythia") == "shorter than 64 tokens"


def test_response_span_is_the_last_response():
    mask = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0], bool)
    assert E.response_span(mask) == (5, 8)
    assert E.response_span(np.zeros(4, bool)) is None
    assert E.response_span(np.array([0, 0, 1], bool)) == (2, 3)


def _records(rng, steps=(0, 5, 9), n=30, cats=("a", "b", "c")):
    out = []
    for step in steps:
        for i in range(n):
            out.append({"run": "R", "step": step, "index": i, "category": cats[i % len(cats)],
                        "rouge_l": float(rng.random() * (1 + step) / 10), "token_match_rate": rng.random(),
                        "longest_prefix": int(rng.integers(0, 9)), "longest_prefix_fraction": rng.random(),
                        "exact_extraction": float(rng.random() < 0.2), "response_tokens": 10 + i % 3 * 20,
                        "prompt_tokens": 5 + i, **{m: rng.random() for m in att.MEASURES}})
    return out


def test_summary_ratios_ranks_and_change_from_step_0_against_numpy():
    rng = np.random.default_rng(0)
    recs = _records(rng)
    summary = E.summarize(recs, threshold=0.4, n_boot=300)
    get = {(s["step"], s["category"]): s for s in summary}
    for step in (0, 5, 9):
        for cat in ("all", "a", "b", "c"):
            sel = [r for r in recs if r["step"] == step and (cat == "all" or r["category"] == cat)]
            base = {r["index"]: r for r in recs if r["step"] == 0}
            s = get[(step, cat)]
            y = np.array([r["rouge_l"] for r in sel])
            d = y - np.array([base[r["index"]]["rouge_l"] for r in sel])
            assert s["records"] == len(sel) == (30 if cat == "all" else 10)
            assert s["rouge_l"] == pytest.approx(y.mean()) and s["ratio"] == pytest.approx((y >= 0.4).mean())
            assert s["rouge_l_change"] == pytest.approx(d.mean())
            assert s["ratio_change"] == pytest.approx((y >= 0.4).mean() - (np.array(
                [base[r["index"]]["rouge_l"] for r in sel]) >= 0.4).mean())
            assert s["rouge_l_lo"] <= s["rouge_l"] <= s["rouge_l_hi"]
            assert s["response_tokens"] == pytest.approx(np.mean([r["response_tokens"] for r in sel]))
        ranked = sorted((get[(step, c)] for c in "abc"), key=lambda s: -s["rouge_l"])
        assert [s["rank"] for s in ranked] == [1, 2, 3]
    assert get[(0, "a")]["rouge_l_change"] == 0.0  # step 0 against itself
    table = E.task_table(summary, "R", 9)
    assert table.count("\n") == 2 + 3 and "change from step 0" in table


def test_mean_ci_against_numpy():
    x = np.random.default_rng(3).normal(2.0, 1.0, 80)
    mean, lo, hi = common.mean_ci(np.r_[x, np.nan], n_boot=2000, seed=1)
    assert mean == pytest.approx(x.mean())
    se = x.std(ddof=1) / math.sqrt(len(x))  # the bootstrap interval is about mean +- 1.96 se
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.35 * se) and hi == pytest.approx(x.mean() + 1.96 * se,
                                                                                            abs=0.35 * se)
    assert common.mean_ci([4.0]) == (4.0, 4.0, 4.0) and all(math.isnan(v) for v in common.mean_ci([]))


def test_correlations_against_scipy():
    from scipy import stats

    rng = np.random.default_rng(2)
    recs = _records(rng, n=40, cats=tuple("abcdef"))
    corr = att.correlations(recs, n_boot=200)
    get = {(c["step"], c["level"], c["change"], c["measure"]): c for c in corr}
    assert (0, "record", "from_step0", "entropy") not in get  # step 0 has no change from itself
    for step in (0, 9):
        at = [r for r in recs if r["step"] == step]
        base = {r["index"]: r for r in recs if r["step"] == 0}
        for m in att.MEASURES:
            x, y = np.array([r[m] for r in at]), np.array([r["rouge_l"] for r in at])
            c = get[(step, "record", "absolute", m)]
            assert c["n"] == 40 and c["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
            assert c["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
            cats = np.array([r["category"] for r in at])
            mx = [x[cats == k].mean() for k in "abcdef"]
            my = [y[cats == k].mean() for k in "abcdef"]
            c = get[(step, "category", "absolute", m)]
            assert c["n"] == 6 and c["spearman"] == pytest.approx(stats.spearmanr(mx, my)[0], abs=1e-12)
            if step:
                dx = x - np.array([base[r["index"]][m] for r in at])
                dy = y - np.array([base[r["index"]]["rouge_l"] for r in at])
                c = get[(step, "record", "from_step0", m)]
                assert c["pearson"] == pytest.approx(stats.pearsonr(dx, dy)[0], abs=1e-12)
                assert c["spearman_lo"] <= c["spearman_hi"]


def _numpy_prompt_stats(p, mask, r0, r1, k):
    """Loop-by-loop reference of attention_concentration.prompt_stats (one layer)."""
    B, H, T, _ = p.shape
    sums = np.zeros((4, B, H))
    n1, n2 = np.zeros((B, H), int), np.zeros((B, H), int)
    for b in range(B):
        for h in range(H):
            for t in range(r0[b] - 1, r1[b] - 1):
                keys = [s for s in range(r0[b]) if mask[b, 0, t, s]]
                if not keys:
                    continue
                w = p[b, h, t, keys].astype(np.float64)
                q = w / w.sum()
                ent = -(q[q > 0] * np.log(q[q > 0])).sum()
                sums[0, b, h] += ent
                sums[2, b, h] += np.sort(q)[::-1][:k].sum()
                sums[3, b, h] += w.sum()
                n1[b, h] += 1
                if len(keys) >= 2:
                    sums[1, b, h] += ent / np.log(len(keys))
                    n2[b, h] += 1
    return sums, n1, n2


def test_prompt_stats_against_numpy_on_random_probabilities():
    rng = np.random.default_rng(4)
    B, H, T = 3, 2, 12
    r0, r1 = np.array([4, 1, 6]), np.array([9, 5, 12])
    for window in (T, 3):  # a global and a local layer (queries far from the prompt see none of it)
        qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
        mask = np.broadcast_to((ki <= qi) & (qi - ki < window), (B, 1, T, T)).copy()
        logits = np.where(mask, rng.normal(0, 2, (B, H, T, T)), -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        got = [np.asarray(x) for x in att.prompt_stats(jnp.asarray(p, jnp.float32), jnp.asarray(mask),
                                                       jnp.asarray(r0), jnp.asarray(r1), top_k=2)]
        sums, n1, n2 = _numpy_prompt_stats(p, mask, r0, r1, 2)
        for g, w in zip(got[:4], sums):
            np.testing.assert_allclose(g, w, atol=1e-4)
        np.testing.assert_array_equal(got[4], n1)
        np.testing.assert_array_equal(got[5], n2)
    # one-token prompt, 4 queries: in the window-3 layer the 4th no longer sees it; normalized entropy undefined
    assert list(n1[1]) == [3, 3] and n2[1].max() == 0


def test_record_means_leave_out_nan_layers():
    v = np.array([[[1.0, 3.0], [np.nan, np.nan]], [[np.nan, np.nan], [np.nan, np.nan]]])
    out = att.record_means({"entropy": v})["entropy"]
    assert out[0] == 2.0 and math.isnan(out[1])


class FakeRun:
    def __init__(self, saved, mem=(0, 2, 4)):
        self.saved, self.mem = list(saved), list(mem)
        from pathlib import Path

        self.path, self.label = Path("/runs/x"), "x"

    def checkpoint_steps(self):
        return self.saved

    def first_last_checkpoints(self, first_step=None, log=None):
        return {"first": [s for s in self.saved if s > 0][0], "last": self.saved[-1]}


def test_steps_include_step_0_by_default():
    run = FakeRun([0, 2, 4, 6])
    assert E.resolve_steps(run) == [0, 2, 4, 6]
    assert E.resolve_steps(run, "last") == [0, 6] and E.resolve_steps(run, "first,last") == [0, 2, 6]
    assert E.resolve_steps(run, "4", baseline=False) == [4]
    with pytest.raises(common.UserError, match="not a saved checkpoint"):
        E.resolve_steps(run, "5")
    with pytest.raises(common.UserError, match="step 0's weights.*--no-baseline"):
        E.resolve_steps(FakeRun([2, 4]), "last")
    assert E.resolve_steps(FakeRun([2, 4]), "last", baseline=False) == [4]


def test_claims_text_states_both_claims_with_numbers():
    rng = np.random.default_rng(5)
    recs = _records(rng, n=30)
    summary = E.summarize(recs, threshold=0.4, n_boot=100)
    corr = att.correlations(recs, n_boot=100)
    text = zeng.describe(["R"], summary, corr, 0.4, "the record's full prompt")
    last = next(s for s in summary if s["step"] == 9 and s["category"] == "all")
    assert "Claim 1" in text and "Claim 2" in text and f"{last['rouge_l']:.3f}" in text
    c = next(c for c in corr if c["step"] == 9 and c["level"] == "record" and c["change"] == "absolute"
             and c["measure"] == "normalized_entropy")
    assert f"Spearman {c['spearman']:.2f}" in text
    rows = [r for r in recs if r["step"] == 9]
    cat, hi, lo = zeng.pick_pair(rows, 0.4)
    assert hi["category"] == lo["category"] == cat and hi["rouge_l"] >= lo["rouge_l"]
