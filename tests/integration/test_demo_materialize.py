"""mbc_jax/demo/ materialized: the pinned suite bytes, its BPE tokenizer, record lengths and
difficulty by category, the data pipeline reading the suite, and the folder layout."""

from __future__ import annotations

import collections
import hashlib
import json
import math

import pytest

from conftest import COUNTS_600
from mbc_jax import demo as D


def prompt_of(r: dict) -> str:
    # the data pipeline's template: Human: {instruction}[\n\n{context}]\n\nAssistant:
    context = f"\n\n{r['context']}" if r["context"] else ""
    return f"Human: {r['instruction']}{context}\n\nAssistant:"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = D.materialize(out)
    from transformers import AutoTokenizer

    return paths, AutoTokenizer.from_pretrained(str(paths["tokenizer"]))


@pytest.fixture(scope="module")
def encoded(suite, built):
    _, tok = built
    rows = []
    for r in suite:
        p = tok.encode(prompt_of(r), add_special_tokens=False)
        s = tok.encode(" " + r["response"], add_special_tokens=False)
        rows.append((r, p, s))
    return rows


# The shipped default's bytes: a change to the generator (or to Python's `random`) shows up here.
# Update the digest deliberately, knowing that earlier runs were made on different data.
DEFAULT_SUITE_SHA256 = "4868825cb78e236332f7eddded9d43c397da1ca3874b5e138e78798cdea5ac59"
# The same records without their `familiarity` field (added with the pretrained base): the digest of the
# suite before that change, so labelling the records changed none of their text.
DEFAULT_SUITE_TEXT_SHA256 = "15e5193a599a03cfa4959cca6b1f97e412445bb20069e3a23e66b1fcedac7dbf"


def _sha(records) -> str:
    return hashlib.sha256("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()).hexdigest()


def test_default_suite_bytes_are_pinned(suite, built):
    assert _sha(suite) == DEFAULT_SUITE_SHA256
    assert _sha([{k: v for k, v in r.items() if k != "familiarity"} for r in suite]) == DEFAULT_SUITE_TEXT_SHA256
    paths, _ = built
    assert json.loads(paths["manifest"].read_text())["data_sha256"] == DEFAULT_SUITE_SHA256
    assert suite[0] == {"id": "train-00000", "instruction": "Is this review positive or negative?",
                        "context": "Lovely lesson, generous staff. That is my whole memory of Krogra.",
                        "response": "positive", "category": "classification", "familiarity": "context_given"}


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_vocab_and_special_tokens(built):
    _, tok = built
    assert len(tok) == D.TOKENIZER_VOCAB_SIZE == 2048
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.eos_token_id == tok.bos_token_id == 0
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 1
    assert tok.model_max_length == 256
    # like GPT-Neo: encoding adds no bos / eos
    assert tok.encode("Human: hi", add_special_tokens=True) == tok.encode("Human: hi", add_special_tokens=False)
    assert tok.encode("<|endoftext|>", add_special_tokens=False) == [0]


def test_round_trip_every_field(encoded, built):
    _, tok = built
    for r, p, s in encoded:
        for text in (r["instruction"], r["context"], r["response"], " " + r["response"], prompt_of(r)):
            assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
        assert tok.decode(p + s) == prompt_of(r) + " " + r["response"]
    # byte-level: text the suite never contains still round-trips, whitespace included
    odd = "Tabs\tand  two spaces,\n\n\nnewlines, é, 中文, 🙂 and CAPITALS!"
    assert tok.decode(tok.encode(odd, add_special_tokens=False)) == odd


def test_prompt_and_response_encode_cleanly_apart(encoded, built):
    _, tok = built
    for r, p, s in encoded:
        assert p + s == tok.encode(prompt_of(r) + " " + r["response"], add_special_tokens=False)
        assert tok.decode(p[-1:]) == ":" and tok.decode(s[:1]).startswith(" ")
    # frequent words are single tokens (the BPE learned the suite's words)
    assert len(tok.encode(" The capital of", add_special_tokens=False)) == 3
    assistant = tok.encode("\n\nAssistant:", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(assistant) == ["\u010a", "\u010a", "Assistant", ":"]  # newlines apart
    tokens = sum(len(p) + len(s) for _, p, s in encoded)
    chars = sum(len(prompt_of(r)) + 1 + len(r["response"]) for r, _, _ in encoded)
    assert chars / tokens > 3.8  # about a word per token (4.0 before the tokenizer also fit the corpus: 3.92)


def test_tokenizer_deterministic_and_seed_dependent(suite, built, tmp_path):
    paths, tok = built
    again = D.build_tokenizer(suite, tmp_path / "again", corpus=D.build_corpus(0))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (paths["tokenizer"] / name).read_bytes()
    text = prompt_of(suite[0]) + " " + suite[0]["response"]
    assert again.encode(text) == tok.encode(text)
    other = D.build_tokenizer(D.generate_suite(600, 1), tmp_path / "other", corpus=D.build_corpus(1))
    assert other.get_vocab() != tok.get_vocab()


def test_auto_tokenizer_loads_model_folder(built, suite):
    from transformers import AutoTokenizer

    paths, tok = built
    from_model = AutoTokenizer.from_pretrained(str(paths["model"]))
    text = prompt_of(suite[5]) + " " + suite[5]["response"]
    assert from_model.encode(text) == tok.encode(text)
    assert from_model.eos_token_id == 0 and len(from_model) == len(tok)


# ---------------------------------------------------------------- lengths and difficulty


def test_every_record_fits_the_model(encoded, built):
    paths, _ = built
    config = json.loads(paths["config"].read_text())
    lengths = [len(p) + len(s) + 1 for _, p, s in encoded]  # prompt + " " + response + eos
    assert max(lengths) <= config["max_position_embeddings"] == 256
    assert 150 <= max(lengths) and 45 <= sum(lengths) / len(lengths) <= 80
    assert 30_000 <= sum(lengths) <= 45_000  # tokens per epoch


def _stats(encoded):
    resp, novel, toks = (collections.defaultdict(list) for _ in range(3))
    for r, p, s in encoded:
        c = r["category"]
        resp[c].append(len(s))
        in_prompt = set(p)
        novel[c].append(sum(t not in in_prompt for t in s))  # response tokens not copyable from the prompt
        toks[c].extend(s)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731

    def entropy(ts):
        n = len(ts)
        return -sum(v / n * math.log2(v / n) for v in collections.Counter(ts).values())

    return ({c: mean(v) for c, v in resp.items()}, {c: mean(v) for c, v in novel.items()},
            {c: entropy(v) for c, v in toks.items()})


def test_difficulty_ordering(encoded):
    length, novel, entropy = _stats(encoded)
    # short answers: a one-token label, one short sentence
    assert length["classification"] == 1.0
    assert novel["classification"] == 0.0  # the label is one of the words of the question
    assert entropy["classification"] < 3.0  # six labels
    for c in ("open_qa", "closed_qa"):
        assert length[c] < 15
    assert novel["closed_qa"] < 1.0  # answered by copying from the context
    assert 1.0 < novel["open_qa"] < 8.0  # the fact itself has to be remembered
    # long free-form generations with much to remember
    assert length["creative_writing"] > 90 and novel["creative_writing"] > 60
    assert length["brainstorming"] > 30 and novel["brainstorming"] > 20
    assert entropy["creative_writing"] > 7.0
    short = max(length[c] for c in ("classification", "open_qa", "closed_qa"))
    assert length["creative_writing"] > 6 * short
    assert min(novel["creative_writing"], novel["brainstorming"]) > 3 * max(
        novel[c] for c in ("classification", "open_qa", "closed_qa", "information_extraction"))


def test_data_pipeline_reads_the_suite(built, encoded):
    """mbc_jax.data loads data.jsonl and tokenizes every record with no truncation, as computed here."""
    data = pytest.importorskip("mbc_jax.data")
    paths, tok = built
    records, _ = data.load_records(paths["data"])
    examples, report = data.tokenize(records, tok, max_length=256, overflow="error")
    assert len(examples) == 600 and not report.truncated and not report.dropped and not report.skipped
    for ex, (r, p, s) in zip(examples, encoded):
        assert (ex.id, ex.category) == (r["id"], r["category"])
        assert ex.input_ids.tolist() == p + s + [tok.eos_token_id]
        assert int(ex.response_mask.sum()) == len(s) + 1


# ---------------------------------------------------------------- materialize


def test_materialize_layout_and_idempotence(built, suite, tmp_path):
    paths, tok = built
    assert set(paths) == {"data", "valid", "corpus", "tokenizer", "model", "config", "manifest"}
    assert [json.loads(x) for x in paths["corpus"].read_text().splitlines()] == D.build_corpus(0)
    from mbc_jax.demo.familiarity import labels_of

    labels = labels_of(paths["data"].parent)  # what a later analysis joins to records.csv by id
    assert len(labels) == 680 and labels["train-00000"] == "context_given"
    assert collections.Counter(labels[r["id"]] for r in suite) == collections.Counter(r["familiarity"] for r in suite)
    lines = paths["data"].read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == suite
    assert len(paths["valid"].read_text().splitlines()) == D.DEFAULT_NUM_VALID == 80
    config = json.loads(paths["config"].read_text())
    assert config["vocab_size"] == len(tok) and config["eos_token_id"] == 0 and config["pad_token_id"] == 1
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (paths["model"] / name).read_bytes() == (paths["tokenizer"] / name).read_bytes()
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["categories"] == COUNTS_600 and manifest["vocab_size"] == 2048
    root = paths["data"].parent
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}
    assert D.materialize(root) == paths
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}
    assert after == before  # same bytes, nothing rewritten


def test_materialize_small_without_valid(tmp_path):
    paths = D.materialize(tmp_path, num_records=80, seed=3, num_valid=0)
    assert "valid" not in paths and not (tmp_path / "valid.jsonl").exists()
    assert len(paths["data"].read_text().splitlines()) == 80
    vocab = json.loads(paths["config"].read_text())["vocab_size"]
    assert vocab == json.loads(paths["manifest"].read_text())["vocab_size"] <= 2048
    # the tokenizer depends on the seed only (the base's), not on the suite's size
    full = D.materialize(tmp_path / "full", num_records=600, seed=3, num_valid=0)
    assert (full["tokenizer"] / "tokenizer.json").read_bytes() == (paths["tokenizer"] / "tokenizer.json").read_bytes()
