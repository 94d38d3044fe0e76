"""Against transformers' PyTorch models (skipped without torch): other configs built on the spot,
exports reloaded with AutoModelForCausalLM, and greedy generation with a repetition penalty."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES, N, _padded_batch, real_max_err, reference
from mbc_jax.generate import SamplingConfig, generate
from mbc_jax.models import export_model, load_model

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed: HF PyTorch cross-check skipped")


# ------------------------------------------------------------------ other configs vs HF PyTorch


OTHER_CONFIGS = {
    "neo_local_first_window3": dict(
        model_type="gpt_neo", vocab_size=97, hidden_size=48, num_layers=3, num_heads=6, window_size=3,
        attention_types=[[["local", "global", "local"], 1]], max_position_embeddings=40,
        intermediate_size=80, activation_function="gelu_new", layer_norm_epsilon=1e-5,
    ),
    "neo_all_local_gelu": dict(
        model_type="gpt_neo", vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, window_size=5,
        attention_types=[[["local"], 2]], max_position_embeddings=32, activation_function="gelu",
    ),
    "opt_preln_projected_nobias": dict(
        model_type="opt", vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, ffn_dim=72,
        word_embed_proj_dim=24, do_layer_norm_before=True, enable_bias=False, max_position_embeddings=40,
    ),
    "opt_postln_no_affine_untied": dict(
        model_type="opt", vocab_size=70, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=40,
        do_layer_norm_before=False, layer_norm_elementwise_affine=False, tie_word_embeddings=False,
        max_position_embeddings=40,
    ),
}
# The newer families, with weights of std 0.2 (not transformers' 0.02) so that attention is far from
# uniform and positions (RoPE, windows) move the logits well past the 1e-4 tolerance.
_WIDE = dict(initializer_range=0.2)
OTHER_CONFIGS |= {
    "gpt2_inverse_layer_scale_untied_upcast": dict(
        _WIDE, model_type="gpt2", vocab_size=90, n_embd=48, n_layer=3, n_head=4, n_positions=40, n_inner=72,
        scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True, tie_word_embeddings=False,
        activation_function="gelu",
    ),
    "gpt2_unscaled_gelu_fast": dict(
        _WIDE, model_type="gpt2", vocab_size=70, n_embd=32, n_layer=2, n_head=2, n_positions=40,
        scale_attn_weights=False, activation_function="gelu_fast",
    ),
    "pythia_serial_rotary25_nobias": dict(
        _WIDE, model_type="gpt_neox", vocab_size=80, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=40, use_parallel_residual=False, attention_bias=False,
        rope_parameters=dict(rope_type="default", rope_theta=500.0, partial_rotary_factor=0.25),
    ),
    "pythia_parallel_full_rotary_tied": dict(
        _WIDE, model_type="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, tie_word_embeddings=True, hidden_act="gelu_new",
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0),
    ),
    "llama_gqa3_llama3_rope_tied_biases": dict(
        _WIDE, model_type="llama", vocab_size=96, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, intermediate_size=80, max_position_embeddings=64, tie_word_embeddings=True,
        attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16),
    ),
    "llama_mqa_linear_rope": dict(
        _WIDE, model_type="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, intermediate_size=48, max_position_embeddings=64,
        rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.0),
    ),
    "llama_mha_head_dim12": dict(
        _WIDE, model_type="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=12, intermediate_size=48, max_position_embeddings=64,
    ),
    "mistral_window5_gqa": dict(
        _WIDE, model_type="mistral", vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, sliding_window=5,
    ),
    "qwen2_gqa4_sliding_upper_layers": dict(
        _WIDE, model_type="qwen2", vocab_size=72, hidden_size=64, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64, use_sliding_window=True,
        sliding_window=6, max_window_layers=1, tie_word_embeddings=True,
    ),
    "qwen3_head_dim24_gqa": dict(
        _WIDE, model_type="qwen3", vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, intermediate_size=64, max_position_embeddings=64,
    ),
    "qwen3_attention_bias_mha": dict(
        _WIDE, model_type="qwen3", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, intermediate_size=48, max_position_embeddings=64, attention_bias=True,
        tie_word_embeddings=True,
    ),
}


def _hf_torch_checkpoint(kwargs: dict, out_dir, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(**kwargs)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # make LayerNorms and biases non-trivial so they are tested too
        for _name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out.logits.float().numpy()


@needs_torch
@pytest.mark.parametrize("name", sorted(OTHER_CONFIGS))
def test_other_configs_match_hf_torch(name, tmp_path):
    kwargs = OTHER_CONFIGS[name]
    hf = _hf_torch_checkpoint(kwargs, tmp_path)
    ours = load_model(str(tmp_path))
    ids, mask = _padded_batch(kwargs["vocab_size"])
    want = _torch_logits(hf, ids, mask)
    got = np.asarray(ours.apply(ids, segment_ids=mask))
    real = mask.astype(bool)
    assert np.abs(got - want)[real].max() < 1e-4
    if "initializer_range" in kwargs:  # logits that differ well beyond the tolerance: a test with teeth
        assert want[real].std(-1).min() > 0.05


@needs_torch
@pytest.mark.parametrize("name", ["mistral_window5_gqa", "qwen2_gqa4_sliding_upper_layers",
                                  "llama_gqa3_llama3_rope_tied_biases", "pythia_serial_rotary25_nobias"])
def test_greedy_matches_hf_generate_on_the_spot(name, tmp_path):
    """Greedy decoding through the KV cache past the attention window and across left padding
    (three prompts of different lengths in one batch) equals HF PyTorch's `generate`, prompt by prompt."""
    kwargs = OTHER_CONFIGS[name]
    hf = _hf_torch_checkpoint(kwargs, tmp_path)
    hf.generation_config.eos_token_id = None
    ours = load_model(str(tmp_path))
    ids, mask = _padded_batch(kwargs["vocab_size"], lengths=(20, 9, 3), seed=1)
    prompts = [row[:n] for row, n in zip(ids, mask.sum(1))]
    cfg = SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=N, ignore_eos=True)
    got = generate(ours, prompts, cfg)
    for prompt, g in zip(prompts, got):
        p = torch.tensor(prompt[None].astype(np.int64))
        with torch.no_grad():
            out = hf.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=N, pad_token_id=0)
        np.testing.assert_array_equal(g.output_ids, out[0, p.shape[1]:].numpy())


# ------------------------------------------------------------------ exports reloaded in HF PyTorch


@needs_torch
@pytest.mark.parametrize("name", ["gpt_neo_tiny", "opt_tiny", "opt_projected_postln", "gpt2_tiny", "pythia_tiny",
                                  "llama_gqa_tiny", "qwen2_tiny"])
def test_export_reloads_in_hf_torch(name, tmp_path, shared_dir):
    from transformers import AutoModelForCausalLM

    model = load_model(str(FIXTURES / name))
    export_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ref = reference(name)
    got = _torch_logits(hf, ref["input_ids"], ref["attention_mask"])
    assert real_max_err(got, ref) < 1e-4


# ------------------------------------------------------------------ generation


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
