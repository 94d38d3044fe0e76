"""One model config for both families, read field by field from a Hugging Face `config.json`.

GPT-Neo and OPT are the same decoder-only transformer with different choices; `ModelConfig`
names each choice explicitly so the Flax module has no family-specific branches beyond them:

| choice              | GPT-Neo                          | OPT                                   |
|---------------------|----------------------------------|---------------------------------------|
| attention scale     | none (scores not scaled)         | head_dim ** -0.5                      |
| attention windows   | per layer: global or local(w)    | all global                            |
| q/k/v bias          | no                               | `enable_bias`                         |
| activation          | `activation_function` (gelu_new) | `activation_function` (relu)          |
| layer norm          | pre-LN + final LN                | pre-LN + final LN, or post-LN (no final LN) |
| positions           | learned, offset 0                | learned, offset 2                     |
| embedding dim       | hidden                           | `word_embed_proj_dim` (+ project_in/out) |
| dropout (training)  | `embed_dropout`, `attention_dropout`, `resid_dropout` | `attention_dropout`, `dropout` (residual branches) |
"""  # noqa: E501 (a Markdown table)

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mbc_jax import UserError

SUPPORTED_MODEL_TYPES = ("gpt_neo", "opt")
ACTIVATIONS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish")
DROPOUT_FIELDS = ("embed_dropout", "attention_dropout", "resid_dropout")  # ModelConfig's training dropout rates
GLOBAL_WINDOW = 1 << 30  # "window" of a global-attention layer: larger than any sequence


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_windows: tuple[int, ...]  # per layer; GLOBAL_WINDOW for global attention
    activation: str
    layer_norm_epsilon: float
    attention_scale: bool  # scale queries by head_dim ** -0.5 (OPT) or not (GPT-Neo)
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    pre_layer_norm: bool
    final_layer_norm: bool
    layer_norm_affine: bool
    position_offset: int
    word_embed_dim: int  # == hidden_size unless OPT's project_in / project_out
    bos_token_id: int | None = None
    eos_token_id: int | None = None
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_projection(self) -> bool:
        return self.word_embed_dim != self.hidden_size

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        e, h, f, layers = self.word_embed_dim, self.hidden_size, self.intermediate_size, self.num_layers
        n = self.vocab_size * e + (self.max_position_embeddings + self.position_offset) * h
        if self.has_projection:
            n += 2 * e * h
        ln = 2 * h if self.layer_norm_affine else 0
        per_layer = 4 * h * h + 2 * h * f + 2 * ln
        per_layer += (3 * h if self.qkv_bias else 0) + (h if self.out_bias else 0)
        per_layer += (f + h) if self.mlp_bias else 0
        n += layers * per_layer + (ln if self.final_layer_norm else 0)
        if not self.tie_word_embeddings:
            n += self.vocab_size * e
        return n


def _expand_attention_types(attention_types: list, where: str) -> list[str]:
    layers: list[str] = []
    try:
        for kinds, repeat in attention_types:
            for _ in range(int(repeat)):
                layers.extend(kinds)
    except (TypeError, ValueError):
        raise UserError(
            f"{where}: attention_types: expected [[[kinds...], repeat], ...], got {attention_types!r}"
        ) from None
    return layers


def _req(cfg: dict, key: str, where: str, kind: type = int) -> Any:
    if key not in cfg or cfg[key] is None:
        raise UserError(f"{where}: {key}: missing (required for model_type {cfg.get('model_type')!r})")
    value = cfg[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise UserError(f"{where}: {key}: expected a positive integer, got {value!r}")
    return value


def _rate(cfg: dict, key: str, where: str) -> float:
    value = cfg.get(key) or 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise UserError(f"{where}: {key}: expected a dropout rate in [0, 1), got {value!r}")
    return float(value)


def config_from_hf(cfg: dict, where: str = "config.json") -> ModelConfig:
    """Builds a `ModelConfig` from a Hugging Face config dict; `where` names it in errors."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{where}: model_type: {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    act = cfg.get("activation_function", "gelu_new" if model_type == "gpt_neo" else "relu")
    if act not in ACTIVATIONS:
        raise UserError(f"{where}: activation_function: {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    common = dict(
        model_type=model_type,
        vocab_size=_req(cfg, "vocab_size", where),
        hidden_size=_req(cfg, "hidden_size", where),
        max_position_embeddings=_req(cfg, "max_position_embeddings", where),
        activation=act,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        attention_dropout=_rate(cfg, "attention_dropout", where),
    )
    if model_type == "gpt_neo":
        num_layers = _req(cfg, "num_layers", where)
        kinds = _expand_attention_types(cfg.get("attention_types") or [[["global"], num_layers]], where)
        if len(kinds) != num_layers:
            raise UserError(
                f"{where}: attention_types: expands to {len(kinds)} layers but num_layers is {num_layers}"
            )
        windows = []
        for kind in kinds:
            if kind == "global":
                windows.append(GLOBAL_WINDOW)
            elif kind == "local":
                windows.append(_req(cfg, "window_size", where))
            else:
                raise UserError(f"{where}: attention_types: unknown attention kind {kind!r} (global, local)")
        hidden = common["hidden_size"]
        mc = ModelConfig(
            **common,
            num_layers=num_layers,
            num_heads=_req(cfg, "num_heads", where),
            intermediate_size=cfg.get("intermediate_size") or 4 * hidden,
            layer_windows=tuple(windows),
            layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            attention_scale=False,
            qkv_bias=False,
            out_bias=True,
            mlp_bias=True,
            pre_layer_norm=True,
            final_layer_norm=True,
            layer_norm_affine=True,
            position_offset=0,
            word_embed_dim=hidden,
            embed_dropout=_rate(cfg, "embed_dropout", where),
            resid_dropout=_rate(cfg, "resid_dropout", where),
        )
    else:  # opt
        num_layers = _req(cfg, "num_hidden_layers", where)
        pre_ln = bool(cfg.get("do_layer_norm_before", True))
        bias = bool(cfg.get("enable_bias", True))
        mc = ModelConfig(
            **common,
            num_layers=num_layers,
            num_heads=_req(cfg, "num_attention_heads", where),
            intermediate_size=_req(cfg, "ffn_dim", where),
            layer_windows=(GLOBAL_WINDOW,) * num_layers,
            layer_norm_epsilon=1e-5,  # OPT's LayerNorms use torch's default eps
            attention_scale=True,
            qkv_bias=bias,
            out_bias=bias,
            mlp_bias=bias,
            pre_layer_norm=pre_ln,
            final_layer_norm=pre_ln and not cfg.get("_remove_final_layer_norm", False),
            layer_norm_affine=bool(cfg.get("layer_norm_elementwise_affine", True)),
            position_offset=2,
            word_embed_dim=cfg.get("word_embed_proj_dim") or common["hidden_size"],
            resid_dropout=_rate(cfg, "dropout", where),  # OPT: none on the embeddings
        )
    if mc.hidden_size % mc.num_heads:
        raise UserError(f"{where}: hidden_size {mc.hidden_size} is not divisible by the number of heads {mc.num_heads}")
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
