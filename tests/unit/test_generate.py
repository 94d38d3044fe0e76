"""Generation: entropies of raw logits, sampling filters against numpy references, the repetition
penalty against numpy, seeds, EOS stops, bad settings, and prompts from every record schema.

Compiles are the cost here (a few seconds each on CPU): most tests share one program shape,
gpt_neo_tiny with 8 rows (the 8 virtual devices), prompt bucket 32 and 12 new tokens. Greedy parity
with the HF fixtures, left padding and a sharded mesh: integration/test_generation.py; HF PyTorch:
integration/test_hf_torch.py."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import GREEDY, N, _write, prompt_set, reference
from mbc_jax import UserError
from mbc_jax.generate import (
    AnswerProgress,
    SamplingConfig,
    build_prompts,
    generate,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from mbc_jax.generate.sampling import first_argmax


def full_logits(model, seqs) -> np.ndarray:
    """Logits [n, 32, V] of right-padded sequences, one forward pass each (no cache): the oracle."""
    rows = 16
    assert len(seqs) <= rows
    ids = np.zeros((rows, 32), np.int32)
    seg = np.zeros((rows, 32), np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], seg[i, :len(s)] = s, 1
    return np.asarray(model.apply(ids, segment_ids=seg), np.float64)[:len(seqs)]


def np_entropy(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return -(p * np.log(np.where(p > 0, p, 1))).sum(-1)


def mass_ahead(probs: np.ndarray) -> np.ndarray:
    """For each token, the probability of the tokens strictly more probable than it."""
    asc = np.sort(probs)
    tail = np.concatenate([np.cumsum(asc[::-1])[::-1], [0.0]])  # tail[i] = asc[i:].sum()
    return tail[np.searchsorted(asc, probs, side="right")]


def np_penalty(logits: np.ndarray, seqs, penalty: float) -> np.ndarray:
    """HF's RepetitionPenaltyLogitsProcessor: gather the sequence's tokens, rescale, scatter back."""
    out = logits.copy()
    for b, seq in enumerate(seqs):
        idx = np.asarray(seq, int)
        score = logits[b, idx]
        out[b, idx] = np.where(score < 0, score * penalty, score / penalty)
    return out


def test_entropy_is_full_softmax_entropy_of_raw_logits(neo, neo_greedy):
    prompts = prompt_set(reference("gpt_neo_tiny"))
    seqs = [np.concatenate([p, g.output_ids]) for p, g in zip(prompts, neo_greedy)]
    logits = full_logits(neo, seqs)
    for b, (p, g) in enumerate(zip(prompts, neo_greedy)):
        steps = logits[b, len(p) - 1:len(p) - 1 + N]
        np.testing.assert_array_equal(steps.argmax(-1), g.output_ids)
        np.testing.assert_allclose(g.token_entropy, np_entropy(steps), atol=1e-4)
        assert g.entropy == pytest.approx(np_entropy(steps).mean(), abs=1e-4)


# --------------------------------------------------------------------------- sampling


def test_temperature_near_zero_and_top_k_1_equal_greedy(neo, neo_greedy):
    prompts = prompt_set(reference("gpt_neo_tiny"))
    cold = SamplingConfig(temperature=1e-4, top_p=1.0, repetition_penalty=1.0, max_new_tokens=N, ignore_eos=True)
    top1 = SamplingConfig(temperature=1.0, top_p=1.0, top_k=1, repetition_penalty=1.0, max_new_tokens=N,
                          ignore_eos=True)
    for cfg in (cold, top1):
        for seed in (0, 1):
            for got, want in zip(generate(neo, prompts, cfg, seed=seed), neo_greedy):
                np.testing.assert_array_equal(got.output_ids, want.output_ids)
    # top-k = 1 leaves one token: the distribution sampled from has zero entropy
    assert all(np.all(g.token_sampling_entropy < 1e-6) for g in generate(neo, prompts, top1))


def test_top_p_never_leaves_the_nucleus(neo):
    """48 samples of 12 tokens at p = 0.5, T = 1: every token is in the nucleus of the model's own
    distribution at its step (recomputed by full forward passes), and the sampling entropy is that
    of the renormalized nucleus."""
    p = 0.5
    prompts = prompt_set(reference("gpt_neo_tiny"))[::2] * 8  # 16 rows: two batches
    cfg = SamplingConfig(temperature=1.0, top_p=p, repetition_penalty=1.0, max_new_tokens=N, ignore_eos=True)
    samples = []
    for seed in range(3):
        gens = generate(neo, prompts, cfg, seed=seed, batch_size=8)  # the shared 8-row program
        samples += list(zip(prompts, gens))
    logits = [full_logits(neo, [np.concatenate([q, g.output_ids]) for q, g in samples[i:i + 16]])
              for i in range(0, len(samples), 16)]
    logits = np.concatenate(logits)
    checked = 0
    for (q, g), lg in zip(samples, logits):
        z = lg[len(q) - 1:len(q) - 1 + N]  # [N, V]: the distribution at each generated token
        probs = np.exp(z - z.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ahead = np.stack([mass_ahead(row) for row in probs])
        tok_ahead = ahead[np.arange(N), g.output_ids]
        assert np.all(tok_ahead < p + 1e-5), f"token outside the nucleus (mass ahead {tok_ahead.max():.4f})"
        np.testing.assert_allclose(g.token_entropy, np_entropy(z), atol=1e-4)
        clear = np.abs(ahead - p).min(-1) > 1e-5  # steps whose nucleus boundary is clear in float32
        nucleus = np.where(ahead < p, z, -np.inf)
        np.testing.assert_allclose(g.token_sampling_entropy[clear], np_entropy(nucleus)[clear], atol=1e-3)
        checked += int(clear.sum())
    assert checked > 0.8 * len(samples) * N
    # the test means something only if the nucleus held several tokens: samples vary
    first = {(int(g.output_ids[0])) for q, g in samples if len(q) == len(prompts[0])}
    assert len(first) > 3


def test_filters_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
    logits[0, :3] = logits[0, 3]  # ties
    for k in (1, 3, 60):
        got = np.asarray(top_k_filter(logits, k))
        kth = np.sort(logits, -1)[:, ::-1][:, min(k, 50) - 1:min(k, 50)]
        np.testing.assert_array_equal(got, np.where(logits >= kth, logits, -np.inf))
    for p in (0.1, 0.5, 0.9, 1.0):
        got = np.asarray(top_p_filter(logits, p))
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ahead = np.stack([mass_ahead(row) for row in probs])
        want = np.where(ahead < p if p < 1 else True, logits, -np.inf)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        assert np.isfinite(got).sum(-1).min() >= 1


def test_filters_on_a_vocabulary_against_float64_numpy():
    """The radix-search cutoffs on 50k-token rows (flat, peaked, ties at the top and at the k-th value, a
    -inf already in the row), against numpy in float64: exact wherever the boundary is clear in float32."""
    rng = np.random.default_rng(2)
    for scale in (0.5, 3.0, 12.0):
        x = (rng.normal(size=(3, 50257)) * scale).astype(np.float32)
        x[0, :4] = x[0].max()  # a tie at the top
        x[1, 7] = -np.inf
        x[2, 100:103] = np.sort(x[2])[-10]  # ties with the 10th largest
        for k in (1, 4, 10, 1000, 60000):
            kth = np.sort(x, -1)[:, ::-1][:, min(k, x.shape[1]) - 1:min(k, x.shape[1])]
            np.testing.assert_array_equal(np.asarray(top_k_filter(x, k)), np.where(x >= kth, x, -np.inf))
        probs = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ahead = np.stack([mass_ahead(row) for row in probs])
        for p in (0.05, 0.5, 0.9, 0.999):
            kept = np.isfinite(np.asarray(top_p_filter(x, p)))
            clear = np.abs(ahead - p) > 1e-5
            np.testing.assert_array_equal(kept[clear], (ahead < p)[clear])
            assert kept.sum(-1).min() >= 1


def test_radix_threshold_equals_bisection():
    """The three-pass radix search returns the very threshold of the 32-step bisection it replaced, for
    probability masses (top-p) and counts (top-k), on rows with ties, -inf, negative and huge values."""
    import jax

    from mbc_jax.generate.sampling import _bisect_threshold, _order_keys, _smallest_threshold

    rng = np.random.default_rng(5)
    for scale in (0.02, 0.7, 4.0, 30.0):
        x = (rng.normal(size=(6, 5000)) * scale).astype(np.float32)
        x[0, :50] = x[0, 50]  # ties
        x[1, ::3] = -np.inf
        x[2] = np.round(x[2])  # few distinct values
        keys = _order_keys(x)
        probs = np.asarray(jax.nn.softmax(x, axis=-1))
        for weight, limits in ((probs, (1e-6, 0.1, 0.9, 0.999)), (np.ones_like(probs), (1.0, 7.0, 2500.0))):
            for limit in limits:
                lim = np.float32(limit)
                np.testing.assert_array_equal(np.asarray(jax.jit(_smallest_threshold)(keys, weight, lim)),
                                              np.asarray(jax.jit(_bisect_threshold)(keys, weight, lim)))


def test_draw_inverts_the_cdf_against_float64_numpy():
    """`draw` at a grid of uniforms picks the token numpy's float64 CDF picks, except where u lies within
    float32 rounding of a boundary; it never returns a token of probability 0."""
    from mbc_jax.generate.sampling import draw

    rng = np.random.default_rng(7)
    x = (rng.normal(size=(4, 3000)) * np.array([[0.1], [1.0], [4.0], [9.0]])).astype(np.float32)
    x[1, ::2] = -np.inf  # filtered tokens
    x[3, 700:2000] = -np.inf
    u = np.linspace(0, 1, 4001, endpoint=False, dtype=np.float32)[1:]
    for row in range(4):
        got = np.asarray(draw(np.repeat(x[row:row + 1], u.size, 0), u))
        p = np.exp(x[row].astype(np.float64) - x[row].max())
        cdf = np.cumsum(p) / p.sum()
        want = np.searchsorted(cdf, u.astype(np.float64), side="right")
        near = np.min(np.abs(cdf[:, None] - u[None, :]), axis=0) < 1e-5
        np.testing.assert_array_equal(got[~near], want[~near])
        assert np.all(np.isfinite(x[row, got])) and (got[~near] == want[~near]).all()
        assert (~near).sum() > 0.9 * u.size


def test_order_keys_and_first_argmax():
    from mbc_jax.generate.sampling import _order_keys

    v = np.array([-np.inf, -3e38, -2.5, -1e-30, -0.0, 0.0, 1e-30, 1.0, 2.5, 3e38, np.inf], np.float32)
    keys = np.asarray(_order_keys(v))
    assert np.all(np.diff(keys[[0, 1, 2, 3, 4, 6, 7, 8, 9, 10]]) > 0) and keys[4] == keys[5]
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(6, 300)).astype(np.float32)  # many ties of the maximum
    x[1] = -np.inf
    x[1, 17] = 0.0
    np.testing.assert_array_equal(np.asarray(first_argmax(x)), np.argmax(x, -1))


_COMPILES: list[str] = []


def _count_compiles(event: str, seconds: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(event)


def test_one_compile_per_prompt_bucket(neo):
    """Three batches of prompts in one bucket compile one prefill and one step program (XLA compiles,
    counted by JAX's own events); a longer bucket adds one of each (with EOS ignored no row finishes early,
    so no smaller batch is compiled)."""
    import jax

    ref = reference("gpt_neo_tiny")
    cfg = SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=3, ignore_eos=True)
    short = [ref["input_ids"][i % 3][:5 + i % 7] for i in range(20)]
    generate(neo, short[:3], cfg, batch_size=8)  # compiles the per-call layer unstacking as well
    if _count_compiles not in getattr(test_one_compile_per_prompt_bucket, "registered", ()):
        jax.monitoring.register_event_duration_secs_listener(_count_compiles)
        test_one_compile_per_prompt_bucket.registered = (_count_compiles,)
    before = len(_COMPILES)
    generate(neo, short, cfg, batch_size=8)  # 3 batches of 8 rows, prompts <= 11 tokens: bucket 16
    assert len(_COMPILES) == before
    generate(neo, short[:5] + [np.arange(40) % 512], cfg, batch_size=8)  # the 40-token prompt: bucket 48
    assert len(_COMPILES) == before + 2  # its prefill and its step program


def test_finished_rows_leave_the_batch_without_changing_any_row(neo):
    """Rows that hit EOS early are read out and the rest continue in a smaller batch (`shrunk_rows`): every
    row's tokens and entropies equal those of the same prompt decoded with EOS ignored, cut at its EOS."""
    from mbc_jax.generate import decode

    ref = reference("gpt_neo_tiny")
    prompts = [ref["input_ids"][i % 3][:4 + i] for i in range(16)]
    free = generate(neo, prompts, SamplingConfig(max_new_tokens=40, ignore_eos=True), seed=3, batch_size=16)
    eos = sorted({int(g.output_ids[1]) for g in free[:8]})  # "EOS" ids: rows 0-7 stop at their 2nd token
    first_hit = [next((j for j, t in enumerate(g.output_ids) if int(t) in eos), None) for g in free]
    assert sum(j is not None and j < decode.CHUNK_STEPS for j in first_hit) >= 8
    assert any(j is None or j >= 2 * decode.CHUNK_STEPS for j in first_hit)  # someone decodes on
    shrinks = []
    real_take = decode._take_rows
    decode._take_rows = lambda state, idx, mesh: shrinks.append(len(idx)) or real_take(state, idx, mesh=mesh)
    try:
        got = generate(neo, prompts, SamplingConfig(max_new_tokens=40), seed=3, batch_size=16, eos_token_id=eos)
    finally:
        decode._take_rows = real_take
    assert shrinks == [8]  # 16 rows -> 8 (the mesh's 8 data devices are the floor)
    for g, f, j in zip(got, free, first_hit):
        n = 40 if j is None else j + 1
        np.testing.assert_array_equal(g.output_ids, f.output_ids[:n])
        np.testing.assert_allclose(g.token_entropy, f.token_entropy[:n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.token_sampling_entropy, f.token_sampling_entropy[:n], rtol=1e-5, atol=1e-6)
        assert g.stopped == ("length" if j is None else "eos")


def test_shrunk_rows():
    from mbc_jax.generate.decode import shrunk_rows

    assert [shrunk_rows(n, 16, 1) for n in (0, 1, 3, 4, 5, 8, 9, 16)] == [1, 1, 4, 4, 8, 8, 16, 16]
    assert shrunk_rows(3, 16, 8) == 8 and shrunk_rows(9, 16, 8) == 16 and shrunk_rows(1, 8, 8) == 8


def test_repetition_penalty_matches_numpy_ctrl_rule():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 40)).astype(np.float32)
    seqs = [[1, 2, 2, 39], [0], [5, 6, 7, 8, 9, 5]]
    present = np.zeros((3, 40), bool)
    for b, s in enumerate(seqs):
        present[b, s] = True
    for r in (1.2, 0.8, 1.0):
        np.testing.assert_allclose(np.asarray(repetition_penalty(logits, present, r)),
                                   np_penalty(logits, seqs, r), rtol=1e-6)


def test_greedy_with_penalty_matches_numpy_decoder(neo):
    """Our KV-cache loop vs a numpy decoder: full forward pass, HF's penalty rule, argmax."""
    prompts = prompt_set(reference("gpt_neo_tiny"))
    cfg = SamplingConfig(greedy=True, repetition_penalty=1.2, max_new_tokens=N, ignore_eos=True)
    got = generate(neo, prompts, cfg)
    seqs = [list(map(int, p)) for p in prompts]
    for _ in range(N):
        logits = full_logits(neo, seqs)
        last = np.stack([logits[b, len(s) - 1] for b, s in enumerate(seqs)])
        nxt = np_penalty(last, seqs, 1.2).argmax(-1)
        for s, t in zip(seqs, nxt):
            s.append(int(t))
    for g, p, s in zip(got, prompts, seqs):
        np.testing.assert_array_equal(g.output_ids, s[len(p):])
    # the penalty bites: the fixture's greedy continuation repeats tokens, this one differs
    assert not np.array_equal(got[0].output_ids, reference("gpt_neo_tiny")["greedy_continuation"])


def test_seeds_and_batch_independence(neo):
    prompts = prompt_set(reference("gpt_neo_tiny"))
    cfg = SamplingConfig(max_new_tokens=N, ignore_eos=True)  # paper defaults
    a = generate(neo, prompts, cfg, seed=7)
    b = generate(neo, prompts, cfg, seed=7)
    c = generate(neo, prompts, cfg, seed=8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.output_ids, y.output_ids)
    assert any(not np.array_equal(x.output_ids, z.output_ids) for x, z in zip(a, c))
    # a prompt's random stream follows its row key, not its place in the batch
    d = generate(neo, [prompts[2], prompts[0]], cfg, seed=7, row_keys=[2, 0])
    np.testing.assert_array_equal(d[0].output_ids, a[2].output_ids)
    np.testing.assert_array_equal(d[1].output_ids, a[0].output_ids)


def test_eos_stops_each_row(neo, neo_greedy):
    prompts = prompt_set(reference("gpt_neo_tiny"))
    for eos in (486, [238, 486]):
        eos_set = {eos} if isinstance(eos, int) else set(eos)
        cfg = SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=N)
        got = generate(neo, prompts, cfg, eos_token_id=eos)
        for g, full in zip(got, neo_greedy):
            hits = [i for i, t in enumerate(full.output_ids) if int(t) in eos_set]
            if hits:
                stop = hits[0] + 1
                assert g.stopped == "eos" and g.num_tokens == stop
            else:
                stop = N
                assert g.stopped == "length"
            np.testing.assert_array_equal(g.output_ids, full.output_ids[:stop])
            np.testing.assert_allclose(g.token_entropy, full.token_entropy[:stop], atol=1e-5)
            assert g.entropy == pytest.approx(full.token_entropy[:stop].mean(), abs=1e-5)
        assert got[0].stopped == "eos"  # the fixture continuation holds both ids
    ignoring = generate(neo, prompts, SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=N,
                                                     ignore_eos=True), eos_token_id=486)
    for g, full in zip(ignoring, neo_greedy):
        assert g.stopped == "length" and g.num_tokens == N
        np.testing.assert_array_equal(g.output_ids, full.output_ids)


def test_bad_settings_and_prompts(neo):
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1),
                dict(repetition_penalty=0.0), dict(max_new_tokens=0)):
        with pytest.raises(UserError):
            SamplingConfig(**bad).validate()
    SamplingConfig(greedy=True, temperature=0.0).validate()  # greedy ignores the temperature
    with pytest.raises(UserError, match="empty"):
        generate(neo, [[]], GREEDY)
    with pytest.raises(UserError, match="positions"):
        generate(neo, [np.ones(120, int)], GREEDY)  # 120 + 12 > 128 positions
    with pytest.raises(UserError, match="vocabulary"):
        generate(neo, [[1, 512]], GREEDY)


# --------------------------------------------------------------------------- prompts from records


def test_prompts_of_every_schema(tmp_path, tokenizer):
    from mbc_jax.data import Template, load_records

    t = Template()
    eos = tokenizer.eos_token_id
    dolly = _write(tmp_path / "d.jsonl", [{"id": "x", "category": "qa", "instruction": "Name a color.",
                                           "context": "Sky.", "response": "Blue."}])
    chat = _write(tmp_path / "c.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "bye"}]}])
    toks = _write(tmp_path / "t.jsonl", [{"input_ids": [10, 11, 12, 13], "prompt_length": 3},
                                         {"input_ids": [10, 11], "prompt_length": 2}])
    text = _write(tmp_path / "x.jsonl", [{"text": "Once upon a time"}])

    (rec,), _ = load_records(dolly)
    (p,) = build_prompts([rec], tokenizer)
    assert p.text == t.prompt(rec) == "Human: Name a color.\n\nSky.\n\nAssistant:"
    assert p.ids.tolist() == tokenizer(p.text)["input_ids"] and p.reference == "Blue."
    assert (p.id, p.category, p.index) == ("x", "qa", 0)
    assert p.instruction == "Name a color.\n\nContext:\nSky."  # what the judge reads: no template markers

    (rec,), _ = load_records(chat)
    (p,) = build_prompts([rec], tokenizer)
    assert p.text == t.prompt(rec) and p.reference == "bye"
    assert p.instruction == ("and?\n\nEarlier turns of the conversation:\n"
                             "system: Be brief.\n\nuser: hi\n\nassistant: hello")
    # earlier turns as training sees them: the first response is followed by its EOS
    first, second = t.prompt(rec).split(" hello")
    want = (tokenizer(first)["input_ids"] + tokenizer(" hello")["input_ids"] + [eos]
            + tokenizer(second, add_special_tokens=False)["input_ids"])
    assert p.ids.tolist() == want

    recs, _ = load_records(toks)
    ps = build_prompts(recs, tokenizer)
    assert [q.ids.tolist() for q in ps] == [[10, 11, 12], [10, 11]]
    assert ps[0].reference == tokenizer.decode([13]) and ps[1].reference is None
    assert [q.instruction for q in ps] == [q.text for q in ps]  # no template applies: the decoded prompt

    (rec,), _ = load_records(text)
    (p,) = build_prompts([rec], tokenizer)
    assert p.text == "Once upon a time" and p.reference is None and p.instruction == "Once upon a time"
    assert p.ids.tolist() == tokenizer("Once upon a time")["input_ids"]

    # too long: the END of the prompt (the assistant prefix) is kept
    (rec,), _ = load_records(dolly)
    (p,) = build_prompts([rec], tokenizer, max_prompt_length=4)
    full = tokenizer(t.prompt(rec))["input_ids"]
    assert p.ids.tolist() == full[-4:] and p.truncated_from == len(full)

    empty = _write(tmp_path / "e.jsonl", [{"input_ids": [1, 2], "prompt_length": 0}])
    with pytest.raises(UserError, match="prompt is empty"):
        build_prompts(load_records(empty)[0], tokenizer)


def test_sampling_entropy_is_that_of_the_processed_distribution_hand_example():
    """The paper's settings on six logits. Penalty 1.2 on the tokens already present (0 and 3): 2 -> 2/1.2,
    -0.5 -> -0.6; temperature 0.7; the probabilities are then 0.579, 0.223, 0.109, 0.023, 0.013, 0.053, so
    top-p 0.9 keeps tokens 0, 1, 2 (0.802 of the mass lies ahead of token 2, 0.911 ahead of token 5): the
    sampling entropy is that of those three, renormalized. The full-softmax reading ignores all of it."""
    from mbc_jax.generate.sampling import Settings, entropy, process_logits

    raw = np.array([[2.0, 1.0, 0.5, -0.5, -1.0, 0.0]], np.float32)
    present = np.array([[True, False, False, True, False, False]])
    cfg = SamplingConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.2)
    x = np.asarray(process_logits(raw, present, Settings.of(cfg)))
    assert np.isfinite(x[0]).tolist() == [True, True, True, False, False, False]
    z = np.array([2.0 / 1.2, 1.0, 0.5]) / 0.7
    q = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert float(entropy(x)[0]) == pytest.approx(-(q * np.log(q)).sum(), abs=1e-6)
    p = np.exp(raw[0].astype(np.float64)) / np.exp(raw[0].astype(np.float64)).sum()
    assert float(entropy(raw)[0]) == pytest.approx(-(p * np.log(p)).sum(), abs=1e-6)


def test_sampling_entropy_at_the_paper_settings(neo):
    """Generation with the paper's settings (penalty 1.2 over prompt and tokens so far, temperature 0.7,
    top-p 0.9): at every step the token lies in the processed nucleus and the sampling entropy is that
    nucleus's, recomputed with numpy from full forward passes; the entropy reading is the raw softmax's."""
    prompts = prompt_set(reference("gpt_neo_tiny"))[::2] * 4  # 8 rows: the shared program
    cfg = SamplingConfig(max_new_tokens=N, ignore_eos=True)
    assert (cfg.temperature, cfg.top_p, cfg.repetition_penalty) == (0.7, 0.9, 1.2)
    gens = generate(neo, prompts, cfg, seed=5, batch_size=8)
    logits = full_logits(neo, [np.concatenate([q, g.output_ids]) for q, g in zip(prompts, gens)])
    checked = 0
    for q, g, lg in zip(prompts, gens, logits):
        raw = lg[len(q) - 1:len(q) - 1 + N]
        np.testing.assert_allclose(g.token_entropy, np_entropy(raw), atol=1e-4)
        for j in range(N):
            x = np_penalty(raw[j][None], [np.concatenate([q, g.output_ids[:j]])], 1.2)[0] / 0.7
            probs = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
            ahead = mass_ahead(probs)
            if np.abs(ahead - 0.9).min() < 1e-5:  # the nucleus boundary is not clear in float32
                continue
            assert ahead[g.output_ids[j]] < 0.9
            assert g.token_sampling_entropy[j] == pytest.approx(np_entropy(np.where(ahead < 0.9, x, -np.inf)),
                                                                abs=1e-3)
            checked += 1
    assert checked > 0.8 * len(prompts) * N
    assert np.mean([g.sampling_entropy for g in gens]) < np.mean([g.entropy for g in gens])  # truncated: narrower


def test_answer_progress_opens_at_the_first_batch_and_follows_the_counts(monkeypatch):
    import io

    import tqdm.auto

    made = []

    def fake_tqdm(**kw):  # a real tqdm writing to a buffer, as it would to a terminal
        bar = tqdm.std.tqdm(**{**kw, "file": io.StringIO(), "disable": False})
        made.append(bar)
        return bar

    monkeypatch.setattr(tqdm.auto, "tqdm", fake_tqdm)
    with AnswerProgress(5, "generate") as progress:
        assert progress.bar is None  # nothing shown until answer_records' checks have passed
        progress(0, 0)
        progress(3, 40)
        assert made[0].n == 3 and made[0].postfix == "tokens=40"
        progress(5, 70)
        assert made[0].n == 5 and "generate" in made[0].fp.getvalue()
    assert made[0].disable  # closed on leaving the block
    with AnswerProgress(5, "generate") as unused:
        pass
    assert unused.bar is None and len(made) == 1  # an error before the first batch leaves no bar
