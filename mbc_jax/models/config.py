"""One model config for every family, read field by field from a Hugging Face `config.json`.

GPT-Neo, OPT, GPT-2, GPT-NeoX (Pythia), Llama, Mistral, Qwen2 and Qwen3 are the same decoder-only
transformer with different choices; `ModelConfig` names each choice explicitly, so the one Flax
decoder has no family-specific branches beyond them (`hf_config.py` reads each family's fields):

| choice              | GPT-Neo     | OPT              | GPT-2        | GPT-NeoX         | Llama / Mistral / Qwen2 / Qwen3 |
|---------------------|-------------|------------------|--------------|------------------|---------------------------------|
| attention scale     | none        | head_dim ** -0.5 | head_dim ** -0.5 (/ layer + 1) | head_dim ** -0.5 | head_dim ** -0.5 |
| attention windows   | global/local per layer | global | global  | global           | Mistral, Qwen: `sliding_window` |
| heads               | MHA         | MHA              | MHA          | MHA              | GQA (`num_kv_heads`), `head_dim` |
| biases              | out, MLP    | `enable_bias`    | all          | `attention_bias`, MLP | Llama: `attention_bias`, `mlp_bias`; Qwen2: q/k/v |
| norm                | LayerNorm   | LayerNorm, pre/post-LN | LayerNorm | LayerNorm     | RMSNorm (+ Qwen3's per-head q/k RMSNorm) |
| MLP                 | gelu_new    | relu             | gelu_new     | gelu             | SwiGLU: silu(gate) * up |
| residual            | serial      | serial           | serial       | parallel or serial | serial |
| positions           | learned     | learned, offset 2 | learned     | RoPE on `rotary_dim` dims | RoPE (default, linear, llama3) |
| embedding dim       | hidden      | `word_embed_proj_dim` (+ project_in/out) | hidden | hidden | hidden |
"""  # noqa: E501 (a Markdown table)

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mbc_jax import UserError
from mbc_jax.models.hf_config import ACTIVATIONS, GLOBAL_WINDOW, READERS

__all__ = ["SUPPORTED_MODEL_TYPES", "ACTIVATIONS", "DROPOUT_FIELDS", "GLOBAL_WINDOW", "ModelConfig", "config_from_hf",
           "read_config_json", "load_config"]

SUPPORTED_MODEL_TYPES = tuple(READERS)
DROPOUT_FIELDS = ("embed_dropout", "attention_dropout", "resid_dropout")  # ModelConfig's training dropout rates


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    activation: str
    layer_norm_epsilon: float  # of the LayerNorms or RMSNorms
    layer_windows: tuple[int, ...] = ()  # per layer; GLOBAL_WINDOW for global attention (default: all global)
    num_kv_heads: int = 0  # key/value heads (grouped-query attention); 0: num_heads
    head_dim: int = 0  # 0: hidden_size // num_heads
    attention_scale: bool = True  # scale queries by head_dim ** -0.5 (all but GPT-Neo)
    scale_by_inverse_layer: bool = False  # and by 1 / (layer index + 1) (GPT-2's scale_attn_by_inverse_layer_idx)
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3)
    gated_mlp: bool = False  # act(gate(x)) * up(x) (SwiGLU with silu)
    parallel_residual: bool = False  # x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX)
    pre_layer_norm: bool = True
    final_layer_norm: bool = True
    layer_norm_affine: bool = True
    positions: str = "learned"  # "learned" (a position embedding table) | "rotary" (RoPE)
    position_offset: int = 0
    rotary_dim: int = 0  # RoPE: the first rotary_dim dims of each head rotate (rotate-half convention)
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default" | "linear" | "llama3"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_positions: int = 0  # llama3 only
    word_embed_dim: int = 0  # == hidden_size unless OPT's project_in / project_out (0: hidden_size)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    # Dropout rates, applied only in training (`CausalLM(deterministic=False)`): after the embeddings, on
    # the attention probabilities, and on each residual branch (attention output, MLP output).
    embed_dropout: float = 0.0
    attention_dropout: float = 0.0
    resid_dropout: float = 0.0
    # Run-time choices (not from config.json).
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype
    remat: str = "none"  # "none" | "full" | "dots" (save matmul outputs)
    attention_block: int = 128  # causal block skipping without a KV cache (0: one full score matrix)
    attention_impl: str = "auto"  # "einsum" | "per_head" (lax.map over heads) | "auto" (per_head on CPU,
    # except in the train step: train.make_train_step picks einsum, faster with gradients)
    kernels_transposed: bool = False  # Linear kernels stored [out, in]: the layers of a decode loop (`unstack_layers`)

    def __post_init__(self):
        fill = dict(layer_windows=(GLOBAL_WINDOW,) * self.num_layers, num_kv_heads=self.num_heads,
                    head_dim=self.hidden_size // max(self.num_heads, 1), word_embed_dim=self.hidden_size)
        for name, value in fill.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)

    @property
    def has_projection(self) -> bool:
        return self.word_embed_dim != self.hidden_size

    @property
    def position_params(self) -> int:
        """Size of the learned position table (0 with RoPE)."""
        if self.positions != "learned":
            return 0
        return (self.max_position_embeddings + self.position_offset) * self.hidden_size

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        e, h, f, layers = self.word_embed_dim, self.hidden_size, self.intermediate_size, self.num_layers
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        n = self.vocab_size * e + self.position_params
        if self.has_projection:
            n += 2 * e * h
        norm = h * (1 if self.norm == "rmsnorm" else 2 * self.layer_norm_affine)
        per_layer = 2 * h * q + 2 * h * kv + (3 if self.gated_mlp else 2) * h * f + 2 * norm
        per_layer += (q + 2 * kv if self.qkv_bias else 0) + (h if self.out_bias else 0)
        per_layer += ((2 if self.gated_mlp else 1) * f + h) if self.mlp_bias else 0
        per_layer += 2 * self.head_dim if self.qk_norm else 0
        n += layers * per_layer + (norm if self.final_layer_norm else 0)
        if not self.tie_word_embeddings:
            n += self.vocab_size * e
        return n


def config_from_hf(cfg: dict, where: str = "config.json") -> ModelConfig:
    """Builds a `ModelConfig` from a Hugging Face config dict; `where` names it in errors."""
    model_type = cfg.get("model_type")
    if model_type not in READERS:
        raise UserError(
            f"{where}: model_type: {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    mc = ModelConfig(model_type=model_type, **READERS[model_type](cfg, where))
    if mc.num_heads % mc.num_kv_heads:
        raise UserError(f"{where}: num_key_value_heads: {mc.num_kv_heads} does not divide the "
                        f"{mc.num_heads} attention heads (each key/value head serves a group of query heads)")
    return mc


def read_config_json(path: str | Path) -> dict:
    """A Hugging Face config.json as a dict; errors name the file (and the line of bad JSON)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return cfg


def load_config(model_dir: str | Path, **runtime: Any) -> ModelConfig:
    """Reads `config.json` from a checkpoint folder; `runtime` sets dtype, param_dtype, remat."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: no config.json in this folder (is it a Hugging Face checkpoint folder?)")
    return config_from_hf(read_config_json(path), str(path)).replace(**runtime)
