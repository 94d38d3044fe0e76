"""The benchmarks' model shapes: a random-weight config.json of about 125M parameters per family (`--family`).

    hf_cfg = family_config("llama", layers=12)

`gpt_neo` (the default, the shared workload's model) is the real gpt-neo-125M config.json
(../shared/tokenizers/gpt-neo-125M). `gpt2`, `opt` and `pythia` are the published configs of GPT-2
small, OPT-125m and Pythia-160m. Llama, Mistral, Qwen2 and Qwen3 publish nothing this small, so their
shapes are ours: GPT-Neo-125M's width and depth (hidden 768, 12 layers of 12 heads of 64) and its
vocabulary (50,257: the shared workload's token ids, and an LM head of the same size), with each
family's own parts: RMSNorm, a SwiGLU MLP of 2,048 (the same MLP parameter count as GPT-Neo's 3,072
GELU MLP), RoPE, grouped-query attention, and the head tying of the family's small models.
Dropout is 0 everywhere (as GPT-Neo's config.json has it; GPT-2 and OPT publish 0.1): the benchmarks
time the architecture, `train_throughput.py --variants dropout=0.1` times dropout. `layers` replaces
the depth.
"""

from __future__ import annotations

import json
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
FAMILIES = ("gpt_neo", "gpt2", "opt", "pythia", "llama", "mistral", "qwen2", "qwen3")

# hidden 768, 12 heads of 64, GPT-Neo's vocabulary and 2,048 positions: the shape the llama-like families share here
_LLAMA_LIKE = {"hidden_size": 768, "num_attention_heads": 12, "head_dim": 64, "intermediate_size": 2048,
               "vocab_size": 50257, "max_position_embeddings": 2048, "hidden_act": "silu", "attention_dropout": 0.0,
               "bos_token_id": 50256, "eos_token_id": 50256}


def _gpt_neo(layers: int) -> dict:
    cfg = json.loads((SHARED / "tokenizers" / "gpt-neo-125M" / "config.json").read_text())
    cfg["num_layers"] = layers
    cfg["attention_types"] = [[["global", "local"], layers // 2]]
    cfg.pop("attention_layers", None)
    return cfg


def family_config(family: str, layers: int = 12) -> dict:
    """The config.json of `family`'s benchmark model with `layers` layers (see the module docstring)."""
    if family == "gpt_neo":
        return _gpt_neo(layers)
    if family == "gpt2":  # GPT-2 small (124M), openai-community/gpt2
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
                "n_embd": 768, "n_head": 12, "n_layer": layers, "n_positions": 1024, "n_ctx": 1024,
                "vocab_size": 50257, "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
                "scale_attn_weights": True, "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0}
    if family == "opt":  # facebook/opt-125m
        return {"model_type": "opt", "architectures": ["OPTForCausalLM"], "activation_function": "relu",
                "hidden_size": 768, "ffn_dim": 3072, "num_attention_heads": 12, "num_hidden_layers": layers,
                "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 768,
                "do_layer_norm_before": True, "enable_bias": True, "bos_token_id": 2, "eos_token_id": 2,
                "pad_token_id": 1, "dropout": 0.0, "attention_dropout": 0.0, "layerdrop": 0.0}
    if family == "pythia":  # EleutherAI/pythia-160m: rotary on 25% of each head, parallel residual, untied head
        return {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_act": "gelu",
                "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": layers,
                "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000,
                "use_parallel_residual": True, "tie_word_embeddings": False, "layer_norm_eps": 1e-5,
                "bos_token_id": 0, "eos_token_id": 0, "attention_dropout": 0.0, "hidden_dropout": 0.0}
    if family == "llama":  # Llama-3.2's parts: grouped-query attention (4 key/value heads), llama3 RoPE, tied head
        return {**_LLAMA_LIKE, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "num_hidden_layers": layers, "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                "tie_word_embeddings": True,
                "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    if family == "mistral":  # Mistral-7B-v0.1's parts, with GPT-Neo-125M's local window (256) so it is timed
        return {**_LLAMA_LIKE, "model_type": "mistral", "architectures": ["MistralForCausalLM"],
                "num_hidden_layers": layers, "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "sliding_window": 256, "tie_word_embeddings": False}
    if family == "qwen2":  # Qwen2.5-0.5B's parts: q/k/v biases, 2 key/value heads, tied head
        return {**_LLAMA_LIKE, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                "num_hidden_layers": layers, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "use_sliding_window": False, "sliding_window": None, "tie_word_embeddings": True}
    if family == "qwen3":  # Qwen3-0.6B's parts: per-head q/k RMSNorm, explicit head_dim, tied head
        return {**_LLAMA_LIKE, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
                "num_hidden_layers": layers, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
                "tie_word_embeddings": True}
    raise SystemExit(f"--family: {family!r} is not one of {', '.join(FAMILIES)}")
