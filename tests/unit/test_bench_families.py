"""The benchmarks' `--family` shapes (benchmarks/_families.py): each parses as its family, the published
ones have their published parameter counts, ours have the hand-counted ones, and the default is the
shared workload's gpt-neo-125M unchanged."""

from __future__ import annotations

import json

import pytest

from benchmarks._families import FAMILIES, family_config
from conftest import TOKENIZER_DIR
from mbc_jax.models import config_from_hf

PUBLISHED = {  # parameter counts as the model cards / papers give them (Pythia: Biderman et al. 2023, Table 1)
    "gpt_neo": 125_198_592, "gpt2": 124_439_808, "opt": 125_239_296, "pythia": 162_322_944,
}


def llama_like_count(cfg: dict) -> int:
    """Embedding (+ untied head) + per layer: q, k, v, o, SwiGLU's three matrices, two RMSNorm scales
    (+ Qwen2's q/k/v biases, + Qwen3's per-head q/k norm scales) + the final norm."""
    v, e, f, layers = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    layer = e * q + 2 * e * kv + q * e + 3 * e * f + 2 * e
    layer += (q + 2 * kv) if cfg["model_type"] == "qwen2" else 0
    layer += 2 * cfg["head_dim"] if cfg["model_type"] == "qwen3" else 0
    return v * e * (1 if cfg["tie_word_embeddings"] else 2) + layers * layer + e


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_parses_with_its_parameter_count(family):
    cfg = family_config(family, 12)
    model = config_from_hf(cfg)
    expected = PUBLISHED.get(family) or llama_like_count(cfg)
    assert model.num_params() == expected
    assert 110e6 < expected < 165e6  # comparable sizes: ~125M each
    assert model.hidden_size == 768 and model.num_layers == 12 and model.vocab_size >= 50257  # the workload's ids fit
    assert {"gpt_neo": "gpt_neo", "pythia": "gpt_neox"}.get(family, family) == model.model_type
    assert model.embed_dropout == model.attention_dropout == model.resid_dropout == 0.0


def test_the_default_is_the_shared_gpt_neo_125m_with_its_depth_replaced():
    real = json.loads((TOKENIZER_DIR / "config.json").read_text())
    cfg = family_config("gpt_neo", 4)
    assert cfg["attention_types"] == [[["global", "local"], 2]] and "attention_layers" not in cfg
    assert {k: v for k, v in cfg.items() if k not in ("num_layers", "attention_types")} == {
        k: v for k, v in real.items() if k not in ("num_layers", "attention_types", "attention_layers")}
    m = config_from_hf(cfg)
    assert m.num_layers == 4 and m.layer_windows == (1 << 30, 256, 1 << 30, 256)


def test_family_parts():
    """Each synthetic family carries its distinguishing part."""
    llama, mistral, qwen2, qwen3 = (config_from_hf(family_config(f, 2)) for f in ("llama", "mistral", "qwen2", "qwen3"))
    assert (llama.rope_type, llama.num_kv_heads, llama.tie_word_embeddings) == ("llama3", 4, True)
    assert mistral.layer_windows == (256, 256) and not mistral.tie_word_embeddings
    assert qwen2.qkv_bias and qwen2.num_kv_heads == 2 and qwen3.qk_norm and qwen3.head_dim == 64
    pythia = config_from_hf(family_config("pythia", 2))
    assert pythia.parallel_residual and pythia.rotary_dim == 16 and not pythia.tie_word_embeddings


def test_unknown_family_is_refused():
    with pytest.raises(SystemExit, match="not one of"):
        family_config("bloom")
