"""Hugging Face `config.json` -> `ModelConfig` fields, one reader per family.

Each reader reads its family's fields by name, with the defaults transformers uses when a field is
absent, and refuses any value the decoder does not implement (an error naming the field and the
value, never an approximation). Readers return plain dicts of `ModelConfig` fields; `config.py`
builds and checks the `ModelConfig`.

RoPE settings have two spellings: transformers >= 5 writes `rope_parameters` (`rope_type`,
`rope_theta`, `partial_rotary_factor`, scaling fields); older checkpoints write `rope_theta`,
`rope_scaling` (`type` or `rope_type`) and, for GPT-NeoX, `rotary_pct` / `rotary_emb_base`. Both
are read, as transformers reads them (`rope_scaling` wins over `rope_parameters`).
"""

from __future__ import annotations

from typing import Any, Callable

from mbc_jax import UserError

ACTIVATIONS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish")
GLOBAL_WINDOW = 1 << 30  # "window" of a global-attention layer: larger than any sequence
ROPE_TYPES = ("default", "linear", "llama3")

Fields = dict[str, Any]


def req(cfg: dict, key: str, where: str, default: int | None = None) -> int:
    """A positive integer field; required unless it has a `default` (transformers' own)."""
    value = cfg.get(key, default)
    if value is None:
        raise UserError(f"{where}: {key}: missing (required for model_type {cfg.get('model_type')!r})")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: {key}: expected a positive integer, got {value!r}")
    return value


def rate(cfg: dict, key: str, where: str, default: float = 0.0) -> float:
    """A dropout rate in [0, 1); `default` when the field is absent (transformers' default)."""
    value = cfg.get(key, default)
    value = 0.0 if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise UserError(f"{where}: {key}: expected a dropout rate in [0, 1), got {value!r}")
    return float(value)


def _flag(cfg: dict, key: str, where: str, default: bool) -> bool:
    value = cfg.get(key)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise UserError(f"{where}: {key}: expected true or false, got {value!r}")
    return value


def _number(value: Any, key: str, where: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
        raise UserError(f"{where}: {key}: expected a positive number, got {value!r}")
    return float(value)


def activation(cfg: dict, key: str, where: str, default: str) -> str:
    act = cfg.get(key) or default
    if act not in ACTIVATIONS:
        raise UserError(f"{where}: {key}: {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return act


def _common(cfg: dict, where: str, *, hidden: str, layers: str, heads: str, positions: str, tied: bool,
            head_dim: str | None = None) -> Fields:
    """The fields every family has; the head size is hidden / heads unless `head_dim` names a field that sets it."""
    num_layers = req(cfg, layers, where)
    if (head_dim is None or cfg.get(head_dim) is None) and req(cfg, hidden, where) % req(cfg, heads, where):
        raise UserError(f"{where}: {hidden} {cfg[hidden]} is not divisible by the number of heads ({heads}) "
                        f"{cfg[heads]}")
    return dict(
        vocab_size=req(cfg, "vocab_size", where),
        hidden_size=req(cfg, hidden, where),
        num_layers=num_layers,
        num_heads=req(cfg, heads, where),
        max_position_embeddings=req(cfg, positions, where),
        layer_windows=(GLOBAL_WINDOW,) * num_layers,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        tie_word_embeddings=_flag(cfg, "tie_word_embeddings", where, tied),
    )


# ----------------------------------------------------------------------------- RoPE


def rope(cfg: dict, where: str, head_dim: int, default_partial: float = 1.0) -> Fields:
    """RoPE fields (`rotary_dim`, `rope_theta`, `rope_type` and its scaling parameters), either spelling."""
    key = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    params = cfg.get(key) or {}
    if not isinstance(params, dict):
        raise UserError(f"{where}: {key}: expected an object, got {params!r}")
    if any(isinstance(v, dict) for v in params.values()):
        raise UserError(f"{where}: {key}: RoPE parameters per layer type are not supported (one set for all layers)")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UserError(f"{where}: {key}.rope_type: {rope_type!r} is not supported "
                        f"(supported: {', '.join(ROPE_TYPES)})")

    def first(*names: str, default: float) -> tuple[str, Any]:
        """(where the value was found, the value): the first of `names` present ("key.name": in `params`)."""
        for name in names:
            held = params if name.startswith(key + ".") else cfg
            if held.get(name.split(".")[-1]) is not None:
                return name, held[name.split(".")[-1]]
        return names[0], default

    theta_key, theta = first(f"{key}.rope_theta", "rope_theta", "rotary_emb_base", default=10000.0)
    partial_key, partial = first(f"{key}.partial_rotary_factor", "partial_rotary_factor", "rotary_pct",
                                 default=default_partial)
    partial = _number(partial, partial_key, where)
    rotary_dim = int(head_dim * partial)
    if rotary_dim < 2 or rotary_dim % 2 or partial > 1:
        raise UserError(f"{where}: {partial_key}: {partial} of head_dim {head_dim} gives {rotary_dim} "
                        f"rotary dimensions; RoPE needs an even number between 2 and head_dim")
    out: Fields = dict(positions="rotary", rotary_dim=rotary_dim, rope_type=rope_type,
                       rope_theta=_number(theta, theta_key, where))

    def need(name: str, default: Any = None) -> float:
        value = params.get(name, default)
        if value is None:
            raise UserError(f"{where}: {key}.{name}: missing (required for rope_type {rope_type!r})")
        return _number(value, f"{key}.{name}", where)

    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = need("factor")
    if rope_type == "llama3":
        out["rope_low_freq_factor"] = need("low_freq_factor")
        out["rope_high_freq_factor"] = need("high_freq_factor")
        if out["rope_high_freq_factor"] <= out["rope_low_freq_factor"]:
            raise UserError(f"{where}: {key}.high_freq_factor: must exceed low_freq_factor, got "
                            f"{out['rope_high_freq_factor']} <= {out['rope_low_freq_factor']}")
        original = cfg.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
        out["rope_original_max_positions"] = int(need("original_max_position_embeddings",
                                                      original or cfg.get("max_position_embeddings")))
    return out


# ----------------------------------------------------------------------------- families


def gpt_neo(cfg: dict, where: str) -> Fields:
    fields = _common(cfg, where, hidden="hidden_size", layers="num_layers", heads="num_heads",
                     positions="max_position_embeddings", tied=True)
    num_layers = fields["num_layers"]
    kinds = _expand_attention_types(cfg.get("attention_types") or [[["global"], num_layers]], where)
    if len(kinds) != num_layers:
        raise UserError(f"{where}: attention_types: expands to {len(kinds)} layers but num_layers is {num_layers}")
    windows = []
    for kind in kinds:
        if kind == "global":
            windows.append(GLOBAL_WINDOW)
        elif kind == "local":
            windows.append(req(cfg, "window_size", where))
        else:
            raise UserError(f"{where}: attention_types: unknown attention kind {kind!r} (global, local)")
    hidden = fields["hidden_size"]
    return dict(
        fields, layer_windows=tuple(windows), intermediate_size=cfg.get("intermediate_size") or 4 * hidden,
        activation=activation(cfg, "activation_function", where, "gelu_new"),
        layer_norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)), attention_scale=False,
        qkv_bias=False, out_bias=True, mlp_bias=True, word_embed_dim=hidden,
        embed_dropout=rate(cfg, "embed_dropout", where), attention_dropout=rate(cfg, "attention_dropout", where),
        resid_dropout=rate(cfg, "resid_dropout", where),
    )


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


def opt(cfg: dict, where: str) -> Fields:
    fields = _common(cfg, where, hidden="hidden_size", layers="num_hidden_layers", heads="num_attention_heads",
                     positions="max_position_embeddings", tied=True)
    pre_ln = bool(cfg.get("do_layer_norm_before", True))
    bias = bool(cfg.get("enable_bias", True))
    return dict(
        fields, intermediate_size=req(cfg, "ffn_dim", where),
        activation=activation(cfg, "activation_function", where, "relu"),
        layer_norm_epsilon=1e-5,  # OPT's LayerNorms use torch's default eps
        qkv_bias=bias, out_bias=bias, mlp_bias=bias, pre_layer_norm=pre_ln,
        final_layer_norm=pre_ln and not cfg.get("_remove_final_layer_norm", False),
        layer_norm_affine=bool(cfg.get("layer_norm_elementwise_affine", True)), position_offset=2,
        word_embed_dim=cfg.get("word_embed_proj_dim") or fields["hidden_size"],
        attention_dropout=rate(cfg, "attention_dropout", where),
        resid_dropout=rate(cfg, "dropout", where),  # OPT: none on the embeddings
    )


def gpt2(cfg: dict, where: str) -> Fields:
    if cfg.get("add_cross_attention"):
        raise UserError(f"{where}: add_cross_attention: true is not supported (a decoder-only language model is)")
    fields = _common(cfg, where, hidden="n_embd", layers="n_layer", heads="n_head", positions="n_positions",
                     tied=True)
    # `reorder_and_upcast_attn` only upcasts the scores to float32, which this decoder always does.
    return dict(
        fields, intermediate_size=cfg.get("n_inner") or 4 * fields["hidden_size"],
        activation=activation(cfg, "activation_function", where, "gelu_new"),
        layer_norm_epsilon=_number(cfg.get("layer_norm_epsilon", 1e-5), "layer_norm_epsilon", where),
        attention_scale=_flag(cfg, "scale_attn_weights", where, True),
        scale_by_inverse_layer=_flag(cfg, "scale_attn_by_inverse_layer_idx", where, False),
        embed_dropout=rate(cfg, "embd_pdrop", where, 0.1), attention_dropout=rate(cfg, "attn_pdrop", where, 0.1),
        resid_dropout=rate(cfg, "resid_pdrop", where, 0.1),
    )


def gpt_neox(cfg: dict, where: str) -> Fields:
    fields = _common(cfg, where, hidden="hidden_size", layers="num_hidden_layers", heads="num_attention_heads",
                     positions="max_position_embeddings", tied=False)
    bias = _flag(cfg, "attention_bias", where, True)
    hidden_dropout = rate(cfg, "hidden_dropout", where)
    return dict(
        fields, **rope(cfg, where, fields["hidden_size"] // fields["num_heads"], default_partial=0.25),
        intermediate_size=req(cfg, "intermediate_size", where),
        activation=activation(cfg, "hidden_act", where, "gelu"),
        layer_norm_epsilon=_number(cfg.get("layer_norm_eps", 1e-5), "layer_norm_eps", where),
        qkv_bias=bias, out_bias=bias, parallel_residual=_flag(cfg, "use_parallel_residual", where, True),
        attention_dropout=rate(cfg, "attention_dropout", where), embed_dropout=hidden_dropout,
        resid_dropout=hidden_dropout,
    )


def _windows(cfg: dict, where: str, num_layers: int, model_type: str) -> tuple[int, ...]:
    """Per-layer attention windows: Mistral's `sliding_window` on every layer; Qwen's on the layers
    `layer_types` names (or, without it, those from `max_window_layers` on) when `use_sliding_window`."""
    if model_type == "llama":
        return (GLOBAL_WINDOW,) * num_layers
    window = cfg.get("sliding_window", 4096)
    if window is not None:
        window = req(cfg, "sliding_window", where, 4096)
    if model_type == "mistral":
        return (window or GLOBAL_WINDOW,) * num_layers
    window = window if _flag(cfg, "use_sliding_window", where, False) else None
    types = cfg.get("layer_types") or [
        "sliding_attention" if window is not None and i >= cfg.get("max_window_layers", 28) else "full_attention"
        for i in range(num_layers)]
    if len(types) != num_layers:
        raise UserError(f"{where}: layer_types: {len(types)} entries but num_hidden_layers is {num_layers}")
    out = []
    for i, kind in enumerate(types):
        if kind == "full_attention":
            out.append(GLOBAL_WINDOW)
        elif kind == "sliding_attention" and window is not None:
            out.append(window)
        elif kind == "sliding_attention":
            raise UserError(f"{where}: layer_types[{i}]: 'sliding_attention' but use_sliding_window is false or "
                            f"sliding_window is null")
        else:
            raise UserError(f"{where}: layer_types[{i}]: {kind!r} is not supported (full_attention, sliding_attention)")
    return tuple(out)


def llama_like(cfg: dict, where: str) -> Fields:
    """Llama, Mistral, Qwen2, Qwen3: RMSNorm, SwiGLU, RoPE, grouped-query attention."""
    model_type = cfg["model_type"]
    fields = _common(cfg, where, hidden="hidden_size", layers="num_hidden_layers", heads="num_attention_heads",
                     positions="max_position_embeddings", tied=False, head_dim="head_dim")
    heads = fields["num_heads"]
    kv_heads = req(cfg, "num_key_value_heads", where) if cfg.get("num_key_value_heads") is not None else heads
    head_dim = req(cfg, "head_dim", where) if cfg.get("head_dim") is not None else fields["hidden_size"] // heads
    attention_bias = _flag(cfg, "attention_bias", where, False) if model_type in ("llama", "qwen3") else False
    return dict(
        fields, **rope(cfg, where, head_dim), num_kv_heads=kv_heads, head_dim=head_dim,
        layer_windows=_windows(cfg, where, fields["num_layers"], model_type),
        intermediate_size=req(cfg, "intermediate_size", where),
        activation=activation(cfg, "hidden_act", where, "silu"),
        layer_norm_epsilon=_number(cfg.get("rms_norm_eps", 1e-6), "rms_norm_eps", where),
        norm="rmsnorm", gated_mlp=True, qk_norm=model_type == "qwen3",
        qkv_bias=attention_bias or model_type == "qwen2", out_bias=attention_bias,
        mlp_bias=_flag(cfg, "mlp_bias", where, False) if model_type == "llama" else False,
        attention_dropout=rate(cfg, "attention_dropout", where),
    )


READERS: dict[str, Callable[[dict, str], Fields]] = {
    "gpt_neo": gpt_neo, "opt": opt, "gpt2": gpt2, "gpt_neox": gpt_neox,
    "llama": llama_like, "mistral": llama_like, "qwen2": llama_like, "qwen3": llama_like,
}
