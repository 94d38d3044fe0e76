"""Where each of our parameters lives in a Hugging Face checkpoint: one plain name table per family.

A table maps our parameter path (module path, "/"-joined) to the HF module name ("{i}" = layer
index); a pair (name, part) is one part of a fused q/k/v tensor (part 0, 1, 2 = q, k, v). Two
family-level facts complete it: which families store linear weights [in, out] (GPT-2's `Conv1D`),
and how a fused q/k/v tensor lays out its output dimension.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from mbc_jax.models.config import ModelConfig

_GPT_NEO = {
    "embed_tokens": "transformer.wte",
    "embed_positions": "transformer.wpe",
    "lm_head": "lm_head",
    "ln_final": "transformer.ln_f",
    "layers/ln_attn": "transformer.h.{i}.ln_1",
    "layers/attn/q": "transformer.h.{i}.attn.attention.q_proj",
    "layers/attn/k": "transformer.h.{i}.attn.attention.k_proj",
    "layers/attn/v": "transformer.h.{i}.attn.attention.v_proj",
    "layers/attn/o": "transformer.h.{i}.attn.attention.out_proj",
    "layers/ln_mlp": "transformer.h.{i}.ln_2",
    "layers/mlp/fc_in": "transformer.h.{i}.mlp.c_fc",
    "layers/mlp/fc_out": "transformer.h.{i}.mlp.c_proj",
}
_OPT = {
    "embed_tokens": "model.decoder.embed_tokens",
    "embed_positions": "model.decoder.embed_positions",
    "lm_head": "lm_head",
    "project_in": "model.decoder.project_in",
    "project_out": "model.decoder.project_out",
    "ln_final": "model.decoder.final_layer_norm",
    "layers/ln_attn": "model.decoder.layers.{i}.self_attn_layer_norm",
    "layers/attn/q": "model.decoder.layers.{i}.self_attn.q_proj",
    "layers/attn/k": "model.decoder.layers.{i}.self_attn.k_proj",
    "layers/attn/v": "model.decoder.layers.{i}.self_attn.v_proj",
    "layers/attn/o": "model.decoder.layers.{i}.self_attn.out_proj",
    "layers/ln_mlp": "model.decoder.layers.{i}.final_layer_norm",
    "layers/mlp/fc_in": "model.decoder.layers.{i}.fc1",
    "layers/mlp/fc_out": "model.decoder.layers.{i}.fc2",
}
_GPT2 = {
    "embed_tokens": "transformer.wte",
    "embed_positions": "transformer.wpe",
    "lm_head": "lm_head",
    "ln_final": "transformer.ln_f",
    "layers/ln_attn": "transformer.h.{i}.ln_1",
    "layers/attn/q": ("transformer.h.{i}.attn.c_attn", 0),
    "layers/attn/k": ("transformer.h.{i}.attn.c_attn", 1),
    "layers/attn/v": ("transformer.h.{i}.attn.c_attn", 2),
    "layers/attn/o": "transformer.h.{i}.attn.c_proj",
    "layers/ln_mlp": "transformer.h.{i}.ln_2",
    "layers/mlp/fc_in": "transformer.h.{i}.mlp.c_fc",
    "layers/mlp/fc_out": "transformer.h.{i}.mlp.c_proj",
}
_GPT_NEOX = {
    "embed_tokens": "gpt_neox.embed_in",
    "lm_head": "embed_out",
    "ln_final": "gpt_neox.final_layer_norm",
    "layers/ln_attn": "gpt_neox.layers.{i}.input_layernorm",
    "layers/attn/q": ("gpt_neox.layers.{i}.attention.query_key_value", 0),
    "layers/attn/k": ("gpt_neox.layers.{i}.attention.query_key_value", 1),
    "layers/attn/v": ("gpt_neox.layers.{i}.attention.query_key_value", 2),
    "layers/attn/o": "gpt_neox.layers.{i}.attention.dense",
    "layers/ln_mlp": "gpt_neox.layers.{i}.post_attention_layernorm",
    "layers/mlp/fc_in": "gpt_neox.layers.{i}.mlp.dense_h_to_4h",
    "layers/mlp/fc_out": "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
}
_LLAMA = {  # also Mistral, Qwen2, Qwen3
    "embed_tokens": "model.embed_tokens",
    "lm_head": "lm_head",
    "ln_final": "model.norm",
    "layers/ln_attn": "model.layers.{i}.input_layernorm",
    "layers/attn/q": "model.layers.{i}.self_attn.q_proj",
    "layers/attn/k": "model.layers.{i}.self_attn.k_proj",
    "layers/attn/v": "model.layers.{i}.self_attn.v_proj",
    "layers/attn/o": "model.layers.{i}.self_attn.o_proj",
    "layers/attn/q_norm": "model.layers.{i}.self_attn.q_norm",
    "layers/attn/k_norm": "model.layers.{i}.self_attn.k_norm",
    "layers/ln_mlp": "model.layers.{i}.post_attention_layernorm",
    "layers/mlp/fc_gate": "model.layers.{i}.mlp.gate_proj",
    "layers/mlp/fc_in": "model.layers.{i}.mlp.up_proj",
    "layers/mlp/fc_out": "model.layers.{i}.mlp.down_proj",
}
NAME_MAPS = {"gpt_neo": _GPT_NEO, "opt": _OPT, "gpt2": _GPT2, "gpt_neox": _GPT_NEOX,
             "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA}
# Families whose linear weights are GPT-2 `Conv1D`s, stored [in, out] (ours too); the others store [out, in].
CONV1D = ("gpt2",)
# How a fused q/k/v tensor lays out its output dimension: "blocks" = [q | k | v] (GPT-2's c_attn),
# "per_head" = [head, (q, k, v), head_dim] (GPT-NeoX's query_key_value).
FUSED_QKV = {"gpt2": "blocks", "gpt_neox": "per_head"}
# Model prefixes that hub checkpoints of the base model leave out (GPT-2's own weights say `h.0...`).
BASE_PREFIXES = ("transformer.", "model.", "gpt_neox.")
# Tensors a checkpoint may hold that the model does not need: causal-mask buffers and RoPE
# frequency buffers of old checkpoints, and the LM head when it is tied to the embedding.
IGNORABLE = re.compile(r".*(attn|attention)\.(attention\.)?(bias|masked_bias)$|.*rotary_emb\.inv_freq$")

@dataclasses.dataclass(frozen=True)
class HFTensor:
    """Where one of our parameters lives in a HF checkpoint."""

    template: str  # the HF tensor name, "{i}" = layer index
    transposed: bool  # stored [out, in] against our [in, out]
    stacked: bool  # one HF tensor per layer, stacked along our first axis
    part: int | None = None  # q/k/v part of a fused tensor
    layout: str = ""  # FUSED_QKV layout of that fused tensor
    heads: int = 0  # heads in each part (for the per-head layout)


def hf_name(cfg: ModelConfig, path: tuple[str, ...]) -> HFTensor:
    """Where one of our parameter paths lives in the HF checkpoint of `cfg`'s family."""
    leaf = path[-1]
    module = "/".join(path[:-1]) if leaf in ("kernel", "bias", "scale") else "/".join(path)
    entry = NAME_MAPS[cfg.model_type][module]
    base, part = (entry, None) if isinstance(entry, str) else entry
    if leaf == "bias":
        name, transposed = base + ".bias", False
    else:  # kernel, scale, or an embedding / lm_head matrix
        name = base + ".weight"
        transposed = (leaf == "kernel" and cfg.model_type not in CONV1D) or module == "lm_head"
    layout = FUSED_QKV.get(cfg.model_type, "") if part is not None else ""
    return HFTensor(name, transposed, path[0] == "layers", part, layout, cfg.num_heads)


def fused_part(array: np.ndarray, t: HFTensor) -> np.ndarray:
    """Part `t.part` of a fused q/k/v array in our orientation ([..., 3 x width])."""
    if t.layout == "blocks":
        return np.split(array, 3, axis=-1)[t.part]
    lead = array.shape[:-1]
    return array.reshape(*lead, t.heads, 3, -1)[..., t.part, :].reshape(*lead, -1)


def fuse(parts: list[np.ndarray], t: HFTensor) -> np.ndarray:
    """The inverse of `fused_part`: q, k, v (our orientation) -> the fused array."""
    if t.layout == "blocks":
        return np.concatenate(parts, axis=-1)
    lead = parts[0].shape[:-1]
    return np.stack([p.reshape(*lead, t.heads, -1) for p in parts], axis=-2).reshape(*lead, -1)
