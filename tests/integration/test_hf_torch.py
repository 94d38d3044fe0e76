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


def _hf_torch_checkpoint(kwargs: dict, out_dir, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(**kwargs)
    model = AutoModelForCausalLM.from_config(cfg).eval()
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
    assert np.abs(got - want)[mask.astype(bool)].max() < 1e-4


# ------------------------------------------------------------------ exports reloaded in HF PyTorch


@needs_torch
@pytest.mark.parametrize("name", ["gpt_neo_tiny", "opt_tiny", "opt_projected_postln"])
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
