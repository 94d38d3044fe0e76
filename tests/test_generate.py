"""Generation: greedy parity with the HF fixtures (left padding included), sampling filters
against numpy references, repetition penalty against numpy and HF PyTorch, seeds, EOS stops,
entropies, prompts from every record schema, and the `generate` CLI end to end.

Compiles are the cost here (a few seconds each on CPU): most tests share one program shape,
gpt_neo_tiny with 8 rows (the 8 virtual devices), prompt bucket 32 and 12 new tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURE_NAMES, FIXTURES, SHARED
from mbc_jax import UserError
from mbc_jax.generate import SamplingConfig, build_prompts, generate, repetition_penalty, top_k_filter, top_p_filter
from mbc_jax.models import load_model

try:
    import torch
except ImportError:
    torch = None

N = 12  # new tokens, as the fixtures' greedy_continuation
GREEDY = SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=N, ignore_eos=True)
TOKENIZER = SHARED / "tokenizers" / "gpt-neo-125M"


def reference(name: str):
    return np.load(FIXTURES / name.replace("_sharded", "") / "reference.npz")


def prompt_set(ref) -> list[np.ndarray]:
    """The fixture prompt with a longer and a shorter one (different left padding in one batch)."""
    return [ref["greedy_prompt"], ref["input_ids"][1][:20], ref["input_ids"][2][:3]]


@pytest.fixture(scope="module")
def neo(shared_dir):
    return load_model(str(FIXTURES / "gpt_neo_tiny"))


@pytest.fixture(scope="module")
def neo_greedy(neo):
    return generate(neo, prompt_set(reference("gpt_neo_tiny")), GREEDY)


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


# --------------------------------------------------------------------------- greedy parity


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_greedy_reproduces_fixture(name, shared_dir):
    model = load_model(str(FIXTURES / name))
    ref = reference(name)
    batched = generate(model, prompt_set(ref), GREEDY)
    alone = generate(model, [ref["greedy_prompt"]], GREEDY)
    for g in (batched[0], alone[0]):
        np.testing.assert_array_equal(g.output_ids, ref["greedy_continuation"])
        assert g.stopped == "length" and g.num_tokens == N
        assert g.sampling_entropy == 0.0
    np.testing.assert_allclose(batched[0].token_entropy, alone[0].token_entropy, atol=1e-5)


def test_tensor_and_fsdp_mesh_gives_the_same_tokens(neo_greedy, shared_dir):
    from mbc_jax.sharding import make_mesh

    model = load_model(str(FIXTURES / "gpt_neo_tiny"), mesh=make_mesh("2,2,2"))
    got = generate(model, prompt_set(reference("gpt_neo_tiny")), GREEDY)
    for g, want in zip(got, neo_greedy):
        np.testing.assert_array_equal(g.output_ids, want.output_ids)
        np.testing.assert_allclose(g.token_entropy, want.token_entropy, atol=1e-5)


def test_left_padding_does_not_change_results(neo, neo_greedy):
    """The same prompts in a 64-token bucket next to a 40-token prompt, in another order."""
    ref = reference("gpt_neo_tiny")
    fix, p20, p3 = prompt_set(ref)
    p40 = np.arange(40) * 7 % 512
    out = generate(neo, [p40, p3, fix, p20], GREEDY)
    for got, want in zip(out[1:], [neo_greedy[2], neo_greedy[0], neo_greedy[1]]):
        np.testing.assert_array_equal(got.output_ids, want.output_ids)
        np.testing.assert_allclose(got.token_entropy, want.token_entropy, atol=1e-5)
    np.testing.assert_array_equal(out[2].output_ids, ref["greedy_continuation"])


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


@pytest.mark.skipif(torch is None, reason="torch not installed: HF PyTorch cross-check skipped")
def test_greedy_with_penalty_matches_hf_generate(neo):
    from transformers import AutoModelForCausalLM

    ref = reference("gpt_neo_tiny")
    hf = AutoModelForCausalLM.from_pretrained(str(FIXTURES / "gpt_neo_tiny")).eval()
    prompt = torch.tensor(ref["greedy_prompt"][None].astype(np.int64))
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, repetition_penalty=1.2,
                          max_new_tokens=N, pad_token_id=0)
    want = out[0, prompt.shape[1]:].numpy()
    cfg = SamplingConfig(greedy=True, repetition_penalty=1.2, max_new_tokens=N)
    got = generate(neo, [ref["greedy_prompt"]], cfg, eos_token_id=hf.generation_config.eos_token_id)[0]
    np.testing.assert_array_equal(got.output_ids, want)


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


@pytest.fixture(scope="module")
def tokenizer(shared_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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

    (rec,), _ = load_records(chat)
    (p,) = build_prompts([rec], tokenizer)
    assert p.text == t.prompt(rec) and p.reference == "bye"
    # earlier turns as training sees them: the first response is followed by its EOS
    first, second = t.prompt(rec).split(" hello")
    want = (tokenizer(first)["input_ids"] + tokenizer(" hello")["input_ids"] + [eos]
            + tokenizer(second, add_special_tokens=False)["input_ids"])
    assert p.ids.tolist() == want

    recs, _ = load_records(toks)
    ps = build_prompts(recs, tokenizer)
    assert [q.ids.tolist() for q in ps] == [[10, 11, 12], [10, 11]]
    assert ps[0].reference == tokenizer.decode([13]) and ps[1].reference is None

    (rec,), _ = load_records(text)
    (p,) = build_prompts([rec], tokenizer)
    assert p.text == "Once upon a time" and p.reference is None
    assert p.ids.tolist() == tokenizer("Once upon a time")["input_ids"]

    # too long: the END of the prompt (the assistant prefix) is kept
    (rec,), _ = load_records(dolly)
    (p,) = build_prompts([rec], tokenizer, max_prompt_length=4)
    full = tokenizer(t.prompt(rec))["input_ids"]
    assert p.ids.tolist() == full[-4:] and p.truncated_from == len(full)

    empty = _write(tmp_path / "e.jsonl", [{"input_ids": [1, 2], "prompt_length": 0}])
    with pytest.raises(UserError, match="prompt is empty"):
        build_prompts(load_records(empty)[0], tokenizer)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_neo_dir(tmp_path_factory, tokenizer):
    from mbc_jax.models import export_model, init_model

    config = dict(model_type="gpt_neo", vocab_size=50257, hidden_size=32, num_layers=2, num_heads=2,
                  window_size=8, attention_types=[[["global", "local"], 1]], max_position_embeddings=64,
                  intermediate_size=64, activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256)
    model = init_model(config, seed=0)
    model.tokenizer = tokenizer
    return export_model(model, tmp_path_factory.mktemp("tiny_neo"))


def test_cli_end_to_end(tmp_path, tiny_neo_dir, tokenizer, capsys):
    from mbc_jax.cli import main
    from mbc_jax.data import Template, load_records
    from mbc_jax.judge import match_answers, read_answers

    rows = [{"id": f"r{i}", "category": ["qa", "write"][i % 2], "instruction": f"Question number {i}?",
             "response": f"Answer {i}."} for i in range(3)]
    data = _write(tmp_path / "data.jsonl", rows)
    out = tmp_path / "a.jsonl"
    base = ["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--max-new-tokens", "6", "--seed", "3"]
    assert main([*base, "--out", str(out)]) == 0
    err = capsys.readouterr()
    assert "tok/s" in err.out and "mean entropy" in err.out and "generate" in err.err

    lines = [json.loads(x) for x in out.read_text().splitlines()]
    records, _ = load_records(data)
    assert [x["id"] for x in lines] == ["r0", "r1", "r2"]
    for x, rec in zip(lines, records):
        assert x["index"] == rec.index and x["category"] == rec.category
        assert x["prompt"] == Template().prompt(rec) and x["reference"] == rec.turns[-1][1]
        assert 1 <= x["num_tokens"] == len(x["output_ids"]) <= 6
        assert x["stopped"] in ("eos", "length") and (x["stopped"] == "eos") == (x["output_ids"][-1] == 50256)
        text_ids = x["output_ids"][:-1] if x["stopped"] == "eos" else x["output_ids"]
        assert x["output_text"] == tokenizer.decode(text_ids, skip_special_tokens=True,
                                                    clean_up_tokenization_spaces=False).strip()
        # a random model is close to uniform over 50257 tokens; the nucleus is narrower
        assert 10.0 < x["entropy"] <= np.log(50257) + 1e-4
        assert 0.0 < x["sampling_entropy"] < x["entropy"]
        assert x["prompt_tokens"] == len(tokenizer(x["prompt"])["input_ids"]) and not x["prompt_truncated"]
    meta = json.loads((tmp_path / "a.meta.json").read_text())
    assert meta["sampling"]["top_p"] == 0.9 and meta["summary"]["records"] == 3

    # the judge reads it; a rerun with the same seed is identical; --limit keeps each record's sample
    assert len(read_answers(out)) == 3
    again = tmp_path / "b.jsonl"
    assert main([*base, "--out", str(again)]) == 0
    assert len(match_answers(out, again).pairs) == 3
    assert again.read_text() == out.read_text()
    limited = tmp_path / "c.jsonl"
    assert main([*base, "--out", str(limited), "--limit", "2", "--greedy"]) == 0
    greedy = [json.loads(x) for x in limited.read_text().splitlines()]
    assert len(greedy) == 2 and all(x["sampling_entropy"] == 0.0 for x in greedy)


def test_answer_records_are_the_cli_lines(tmp_path, tiny_neo_dir, capsys):
    """`answer_records` (what `experiments/table1_entropy.py` calls) gives exactly the lines and the
    summary `mbc-jax generate` writes; its progress callback opens with (0, 0), then counts records
    and tokens after each batch."""
    from mbc_jax.cli import main
    from mbc_jax.data import load_records
    from mbc_jax.generate import answer_records

    rows = [{"id": f"r{i}", "instruction": f"Question number {i}?", "response": f"Answer {i}."} for i in range(5)]
    data = _write(tmp_path / "data.jsonl", rows)
    out = tmp_path / "a.jsonl"
    assert main(["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--max-new-tokens", "6",
                 "--seed", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    calls = []
    answers = answer_records(load_model(str(tiny_neo_dir)), load_records(data)[0], SamplingConfig(max_new_tokens=6),
                             seed=3, on_batch=lambda *a: calls.append(a))
    assert [json.loads(x) for x in out.read_text().splitlines()] == answers.rows
    meta = json.loads((tmp_path / "a.meta.json").read_text())
    assert meta["eos_token_id"] == answers.eos_token_id == 50256
    for key in ("records", "tokens", "mean_entropy", "mean_sampling_entropy", "stopped_eos", "mean_tokens",
                "prompts_truncated", "max_prompt_length"):
        assert meta["summary"][key] == answers.summary[key], key
    assert calls == [(0, 0), (5, answers.summary["tokens"])]


def test_cli_errors(tmp_path, tiny_neo_dir, capsys):
    from mbc_jax.cli import main

    data = _write(tmp_path / "data.jsonl", [{"instruction": "q", "response": "a"}])
    out = str(tmp_path / "o.jsonl")
    # the fixture checkpoint has no tokenizer files
    assert main(["generate", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(data), "--out", out]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    args = ["generate", "--model", str(tiny_neo_dir), "--data", str(data), "--out", out]
    for extra, message in ((["--top-p", "0"], "top_p"), (["--temperature", "-1"], "temperature"),
                           (["--max-new-tokens", "64"], "positions"), (["--max-prompt-length", "60"], "positions"),
                           (["--batch-size", "0"], "batch-size")):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err
