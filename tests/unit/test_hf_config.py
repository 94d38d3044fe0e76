"""mbc_jax/models/hf_config.py: each family's config.json read field by field, both RoPE spellings,
transformers' defaults for absent fields, and every unsupported value refused by name."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import FIXTURES
from mbc_jax import UserError
from mbc_jax.models import abstract_params, config_from_hf
from mbc_jax.models.config import GLOBAL_WINDOW
from mbc_jax.sharding import make_mesh

LLAMA = dict(model_type="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def test_new_fixture_configs_read_field_by_field(shared_dir):
    gpt2 = config_from_hf(_fixture("gpt2_tiny"))
    assert (gpt2.hidden_size, gpt2.num_layers, gpt2.num_heads, gpt2.intermediate_size) == (64, 3, 4, 256)
    assert (gpt2.positions, gpt2.attention_scale, gpt2.scale_by_inverse_layer, gpt2.activation) == (
        "learned", True, False, "gelu_new")
    pythia = config_from_hf(_fixture("pythia_tiny"))
    assert (pythia.rotary_dim, pythia.rope_theta, pythia.parallel_residual, pythia.tie_word_embeddings) == (
        4, 10000.0, True, False)
    assert (pythia.qkv_bias, pythia.out_bias, pythia.activation, pythia.norm) == (True, True, "gelu", "layernorm")
    llama = config_from_hf(_fixture("llama_gqa_tiny"))
    assert (llama.num_heads, llama.num_kv_heads, llama.head_dim, llama.rotary_dim, llama.norm) == (4, 2, 16, 16,
                                                                                                   "rmsnorm")
    assert (llama.gated_mlp, llama.qkv_bias, llama.mlp_bias, llama.layer_norm_epsilon) == (True, False, False, 1e-5)
    qwen2 = config_from_hf(_fixture("qwen2_tiny"))
    assert (qwen2.qkv_bias, qwen2.out_bias, qwen2.rope_theta, qwen2.tie_word_embeddings) == (True, False, 1e6, True)
    assert qwen2.layer_windows == (GLOBAL_WINDOW,) * 2


@pytest.mark.parametrize("name", ["gpt_neo_tiny", "opt_projected_postln", "gpt2_tiny", "pythia_tiny",
                                  "llama_gqa_tiny", "qwen2_tiny"])
def test_num_params_counts_the_built_parameters(name, shared_dir):
    cfg = config_from_hf(_fixture(name))
    abstract, _, _ = abstract_params(cfg, make_mesh("1,1,1", jax.devices()[:1]))
    assert cfg.num_params() == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract))


def test_qwen3_head_dim_and_qk_norm_are_counted():
    cfg = config_from_hf(dict(LLAMA, model_type="qwen3", head_dim=24, attention_bias=True))
    assert (cfg.head_dim, cfg.qk_norm, cfg.qkv_bias, cfg.out_bias) == (24, True, True, True)
    abstract, _, _ = abstract_params(cfg, make_mesh("1,1,1", jax.devices()[:1]))
    assert abstract["layers"]["attn"]["q"]["kernel"].shape == (2, 32, 4 * 24)
    assert abstract["layers"]["attn"]["k_norm"]["scale"].shape == (2, 24)
    assert cfg.num_params() == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract))


def test_old_and_new_rope_spellings_agree():
    """transformers < 5 wrote `rope_theta` + `rope_scaling` (`type`), and `rotary_pct` /
    `rotary_emb_base` for GPT-NeoX; 5 writes `rope_parameters`. Both read the same."""
    new = config_from_hf(dict(LLAMA, rope_parameters=dict(rope_type="llama3", rope_theta=5e5, factor=8.0,
                                                          low_freq_factor=1.0, high_freq_factor=4.0,
                                                          original_max_position_embeddings=8192)))
    old = config_from_hf(dict(LLAMA, rope_theta=5e5, rope_scaling=dict(type="llama3", factor=8.0, low_freq_factor=1.0,
                                                                        high_freq_factor=4.0,
                                                                        original_max_position_embeddings=8192)))
    assert new == old and (new.rope_type, new.rope_factor, new.rope_original_max_positions) == ("llama3", 8.0, 8192)
    neox = dict(model_type="gpt_neox", vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=64)
    a = config_from_hf(dict(neox, rotary_pct=0.5, rotary_emb_base=500))
    b = config_from_hf(dict(neox, rope_parameters=dict(rope_type="default", rope_theta=500.0,
                                                       partial_rotary_factor=0.5)))
    assert a == b and (a.rotary_dim, a.rope_theta) == (8, 500.0)
    assert config_from_hf(neox).rotary_dim == 4  # GPT-NeoX's default rotary_pct is 0.25
    assert config_from_hf(LLAMA).rope_theta == 10000.0 and config_from_hf(LLAMA).rotary_dim == 8


def test_absent_fields_take_transformers_defaults():
    mistral = config_from_hf(dict(LLAMA, model_type="mistral"))
    assert mistral.layer_windows == (4096, 4096)  # MistralConfig's sliding_window default
    assert config_from_hf(dict(LLAMA, model_type="mistral", sliding_window=None)).layer_windows == (GLOBAL_WINDOW,) * 2
    assert config_from_hf(dict(LLAMA, model_type="qwen2", sliding_window=4)).layer_windows == (GLOBAL_WINDOW,) * 2
    qwen = config_from_hf(dict(LLAMA, model_type="qwen2", num_hidden_layers=3, use_sliding_window=True,
                               sliding_window=4, max_window_layers=1))
    assert qwen.layer_windows == (GLOBAL_WINDOW, 4, 4)
    gpt2 = config_from_hf(dict(model_type="gpt2", vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    assert (gpt2.embed_dropout, gpt2.attention_dropout, gpt2.resid_dropout, gpt2.intermediate_size) == (
        0.1, 0.1, 0.1, 128)
    assert config_from_hf(LLAMA).layer_norm_epsilon == 1e-6


@pytest.mark.parametrize("change, message", [
    (dict(rope_parameters=dict(rope_type="yarn", factor=4.0)),
     r"rope_parameters.rope_type: 'yarn' is not supported \(supported: default, linear, llama3\)"),
    (dict(rope_scaling=dict(type="dynamic", factor=2.0)), r"rope_scaling.rope_type: 'dynamic' is not supported"),
    (dict(rope_parameters=dict(rope_type="linear")), r"rope_parameters.factor: missing \(required for rope_type"),
    (dict(rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0)),
     r"rope_parameters.high_freq_factor: missing"),
    (dict(hidden_act="gelu_python"), r"hidden_act: 'gelu_python' is not supported"),
    (dict(num_key_value_heads=3), r"num_key_value_heads: 3 does not divide the 4 attention heads"),
    (dict(partial_rotary_factor=0.1), r"partial_rotary_factor: 0.1 of head_dim 8 gives 0 rotary dimensions"),
    (dict(model_type="qwen2", layer_types=["sliding_attention", "full_attention"]),
     r"layer_types\[0\]: 'sliding_attention' but use_sliding_window is false"),
    (dict(model_type="qwen2", layer_types=["full_attention", "chunked_attention"]),
     r"layer_types\[1\]: 'chunked_attention' is not supported"),
    (dict(model_type="mistral", sliding_window=0), r"sliding_window: expected a positive integer, got 0"),
    (dict(attention_bias="yes"), r"attention_bias: expected true or false, got 'yes'"),
])
def test_unsupported_values_are_named(change, message):
    with pytest.raises(UserError, match=r"^cfg.json: " + message):
        config_from_hf(dict(LLAMA, **change), "cfg.json")


def test_gpt2_cross_attention_and_odd_heads_are_refused():
    gpt2 = dict(model_type="gpt2", vocab_size=64, n_embd=30, n_layer=2, n_head=4, n_positions=32)
    with pytest.raises(UserError, match=r"n_embd 30 is not divisible by the number of heads \(n_head\) 4"):
        config_from_hf(gpt2)
    with pytest.raises(UserError, match="add_cross_attention: true is not supported"):
        config_from_hf(dict(gpt2, n_embd=32, add_cross_attention=True))
