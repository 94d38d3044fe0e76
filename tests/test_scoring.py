"""Scorer: HF fixture record metrics (direct and through the CLI), packed == unpacked,
sharded == single device, one compile per shape, bad input through the CLI."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from benchmarks._buckets import bucket
from conftest import FIXTURES
from mbc_jax.cli import main as cli
from mbc_jax.data import Example, pack
from mbc_jax.models import init_model, load_model
from mbc_jax.scoring import Scorer
from mbc_jax.sharding import make_mesh

FIXTURE_MODELS = ("gpt_neo_tiny", "opt_tiny", "opt_projected_postln")


def fixture_examples(name: str) -> tuple[list[Example], dict]:
    ref = dict(np.load(FIXTURES / name / "reference.npz"))
    examples = []
    for b, row in enumerate(ref["input_ids"]):
        n = int(ref["attention_mask"][b].sum())
        examples.append(Example(b, f"r{b}", "", row[:n].astype(np.int32), np.arange(n) >= ref["prompt_lens"][b]))
    return examples, ref


def assert_matches_reference(get, ref) -> None:
    np.testing.assert_allclose(get("perplexity"), ref["record_ppl"], rtol=1e-4)
    np.testing.assert_allclose(get("response_perplexity"), ref["record_response_ppl"], rtol=1e-4)
    np.testing.assert_array_equal(np.float32(get("exact_match")), ref["record_exact_match"])
    np.testing.assert_array_equal(np.float32(get("response_exact_match")), ref["record_response_exact_match"])
    np.testing.assert_allclose(get("entropy"), ref["record_tf_entropy"], rtol=1e-4)


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


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_cli_reproduces_fixture_metrics(name, tmp_path, shared_dir, capsys):
    examples, ref = fixture_examples(name)
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps({"input_ids": e.input_ids.tolist(), "prompt_length": int(ref["prompt_lens"][i]),
                                        "id": f"rec-{i}", "category": "even" if i % 2 == 0 else "odd"}) + "\n"
                            for i, e in enumerate(examples)))
    out = tmp_path / "scores.jsonl"
    assert cli(["score", "--model", str(FIXTURES / name), "--data", str(data), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(examples)))
    assert [r["id"] for r in rows] == [f"rec-{i}" for i in range(len(examples))]
    assert set(rows[0]) >= {"index", "id", "category", "tokens", "response_tokens", "perplexity",
                            "response_perplexity", "exact_match", "response_exact_match", "entropy"}
    assert_matches_reference(lambda k: np.asarray([r[k] for r in rows]), ref)
    printed = capsys.readouterr().out
    assert "even" in printed and "odd" in printed and "ALL" in printed


def random_examples(n: int, vocab: int, seed: int = 0, max_len: int = 60) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(2, max_len))
        prompt = int(rng.integers(1, length))
        out.append(Example(i, str(i), "", rng.integers(0, vocab, length).astype(np.int32), np.arange(length) >= prompt))
    return out


TINY = dict(model_type="gpt_neo", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, window_size=6,
            attention_types=[[["global", "local"], 1]], max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_model():
    return init_model(TINY, mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=1)


def test_packed_equals_unpacked(tiny_model):
    examples = random_examples(40, 96)
    scorer = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=256)
    packed_batches = pack(examples, 64, 4)
    assert max((b.record_index >= 0).sum(1).max() for b in packed_batches) > 2  # really several per row
    packed = scorer(tiny_model.params, examples, packed_batches)
    alone = scorer(tiny_model.params, examples, pack(examples, 64, 4, max_segments=1))
    bucketed = scorer(tiny_model.params, examples, bucket(examples, (16, 32, 64), 256))
    for other in (alone, bucketed):
        for k in packed.sums:
            np.testing.assert_allclose(packed.sums[k], other.sums[k], rtol=2e-5, atol=1e-5, err_msg=k)
    # and each record alone through the plain forward pass (full logits, no chunking)
    for i in (0, 7, 23):
        ex = examples[i]
        logits = np.asarray(tiny_model.apply(ex.input_ids[None]), np.float64)[0, :-1]
        logp = (logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
                - logits.max(-1, keepdims=True))
        nll = -logp[np.arange(len(ex) - 1), ex.input_ids[1:]]
        assert packed.perplexity()[i] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
        match = (logits.argmax(-1) == ex.input_ids[1:])
        assert packed.exact_match()[i] == pytest.approx(match.mean())
        resp = ex.response_mask[1:]
        assert packed.exact_match(True)[i] == pytest.approx(match[resp].mean())


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


@pytest.mark.parametrize("mesh", ["8,1,1", "2,2,2", "1,4,2"])
def test_sharded_scores_equal_single_device(mesh, tiny_model, tmp_path):
    from mbc_jax.models import export_model

    examples = random_examples(50, 96, seed=3)
    want = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=512)(tiny_model.params, examples)
    export_model(tiny_model, tmp_path)
    sharded = load_model(str(tmp_path), mesh=make_mesh(mesh))
    got = Scorer(sharded.module, sharded.mesh, seq_len=64, tokens_per_batch=512)(sharded.params, examples)
    for k in want.sums:
        np.testing.assert_allclose(got.sums[k], want.sums[k], rtol=1e-5, atol=1e-4, err_msg=k)


def test_real_tokenizer_dolly_records(tmp_path, shared_dir, capsys):
    """Dolly rows through the real GPT-Neo tokenizer and a random model of the real vocabulary."""
    from transformers import AutoTokenizer

    from mbc_jax.models import export_model

    cfg = dict(TINY, vocab_size=50257, max_position_embeddings=256)
    model = init_model(cfg, mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=0)
    model.tokenizer = AutoTokenizer.from_pretrained(str(shared_dir / "tokenizers" / "gpt-neo-125M"))
    export_model(model, tmp_path / "model")
    lines = (shared_dir / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl").open().readlines()[:24]
    (tmp_path / "dolly.jsonl").write_text("".join(lines))
    out = tmp_path / "scores.jsonl"
    assert cli(["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "dolly.jsonl"),
                "--out", str(out), "--max-length", "128"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 24 and [r["category"] for r in rows] == [json.loads(x)["category"] for x in lines]
    for r in rows:
        assert 0 <= r["response_tokens"] < r["tokens"] <= 127
        assert 0 <= r["exact_match"] <= 1 and r["perplexity"] > 1
    # records whose response was truncated away have undefined (null) response metrics, and are reported
    no_response = [r["id"] for r in rows if r["response_tokens"] == 0]
    assert no_response == ["20", "21", "22", "23"]
    assert all(r["response_exact_match"] is None for r in rows if r["response_tokens"] == 0)
    assert "no response token left" in capsys.readouterr().err
    # a random model of vocabulary V is close to uniform: perplexity near V, entropy near log V
    assert np.median([r["perplexity"] for r in rows]) == pytest.approx(50257, rel=0.5)
    assert np.mean([r["entropy"] for r in rows]) == pytest.approx(np.log(50257), rel=0.05)


def test_cli_bad_input_is_one_line(tmp_path, shared_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2,\n')
    code = cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2:" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    # with --skip-bad the good record is scored and the bad one counted and listed
    code = cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(bad), "--out", str(tmp_path / "o"),
                "--skip-bad"])
    assert code == 0
    assert len((tmp_path / "o").read_text().splitlines()) == 1
    skipped = [json.loads(x) for x in (tmp_path / "o.skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 1 and skipped[0]["source"].endswith(":2")


def test_cli_text_records_need_a_tokenizer(tmp_path, capsys, shared_dir):
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "hello"}\n')
    assert cli(["score", "--model", str(FIXTURES / "gpt_neo_tiny"), "--data", str(data),
                "--out", str(tmp_path / "o")]) == 2
    assert "no tokenizer" in capsys.readouterr().err
