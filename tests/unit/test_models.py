"""Models: HF fixture parity, checkpoint formats, export (sharded safetensors, with a tokenizer),
bad checkpoints, and dropout rates (against HF PyTorch: integration/test_hf_torch.py)."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from conftest import FIXTURE_NAMES, FIXTURES, real_max_err, reference
from mbc_jax import UserError
from mbc_jax.models import export_model, load_model


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_parity(name, shared_dir):
    model = load_model(str(FIXTURES / name))
    ref = reference(name)
    logits = model.apply(ref["input_ids"], segment_ids=ref["attention_mask"])
    assert logits.shape == ref["logits"].shape
    assert real_max_err(logits, ref) < 1e-4


def test_config_fields_read(shared_dir):
    neo = load_model(str(FIXTURES / "gpt_neo_tiny")).config
    assert neo.layer_windows[1] == 8 and neo.layer_windows[0] > 1 << 20
    assert neo.intermediate_size == 4 * 64 and not neo.attention_scale
    opt = load_model(str(FIXTURES / "opt_projected_postln")).config
    assert (opt.word_embed_dim, opt.hidden_size, opt.pre_layer_norm, opt.final_layer_norm) == (32, 64, False, False)


# ------------------------------------------------------------------ checkpoint formats and export


def test_flax_msgpack_checkpoint(tmp_path, shared_dir):
    """A HF Flax-style msgpack (kernel [in, out], scale, embedding names) loads to the same logits."""
    from flax import serialization
    from safetensors.numpy import load_file

    src = FIXTURES / "opt_tiny"
    tree: dict = {}
    for name, array in load_file(str(src / "model.safetensors")).items():
        *path, leaf = name.split(".")
        if leaf == "weight":
            leaf = "kernel" if array.ndim == 2 and path[-1] not in ("embed_tokens", "embed_positions") else (
                "embedding" if array.ndim == 2 else "scale")
            array = array.T if leaf == "kernel" else array
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = array
    shutil.copy(src / "config.json", tmp_path / "config.json")
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))
    ref = reference("opt_tiny")
    model = load_model(str(tmp_path))
    assert real_max_err(model.apply(ref["input_ids"], segment_ids=ref["attention_mask"]), ref) < 1e-4


def test_torch_bin_without_torch_is_a_clear_error(tmp_path, shared_dir, monkeypatch):
    import builtins

    shutil.copy(FIXTURES / "gpt_neo_tiny" / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(UserError, match="torch is not installed.*save_pretrained"):
        load_model(str(tmp_path))


def test_export_sharded_safetensors_round_trip(tmp_path, shared_dir):
    from mbc_jax.models import hf_io

    model = load_model(str(FIXTURES / "gpt_neo_tiny"))
    tensors = hf_io.params_to_hf(model.config, model.params)
    hf_io.save_safetensors(tensors, tmp_path, max_shard_bytes=200_000)
    shutil.copy(FIXTURES / "gpt_neo_tiny" / "config.json", tmp_path / "config.json")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    again = load_model(str(tmp_path))
    for x, y in zip(jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_with_tokenizer(tmp_path, shared_dir):
    from transformers import AutoTokenizer

    model = load_model(str(FIXTURES / "gpt_neo_tiny"))
    model.tokenizer = AutoTokenizer.from_pretrained(str(shared_dir / "tokenizers" / "gpt-neo-125M"))
    export_model(model, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok("Human: hi")["input_ids"] == model.tokenizer("Human: hi")["input_ids"]
    assert load_model(str(tmp_path)).tokenizer.eos_token_id == 50256


# ------------------------------------------------------------------ bad checkpoints


def _copy_fixture(tmp_path, name="gpt_neo_tiny"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))


def test_unsupported_model_type_lists_supported(tmp_path, shared_dir):
    d = _copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gemma"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"model_type: 'gemma' is not supported \(supported: gpt_neo, opt, gpt2, "
                                        r"gpt_neox, llama, mistral, qwen2, qwen3\)"):
        load_model(str(d))


def test_missing_tensor_is_named(tmp_path, shared_dir):
    from safetensors.numpy import load_file, save_file

    d = _copy_fixture(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["transformer.h.2.mlp.c_fc.bias"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(UserError, match=r"tensor transformer\.h\.2\.mlp\.c_fc\.bias is missing"):
        load_model(str(d))


def test_misshapen_tensor_names_both_shapes(tmp_path, shared_dir):
    from safetensors.numpy import load_file, save_file

    d = _copy_fixture(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["transformer.h.1.attn.attention.q_proj.weight"] = np.zeros((64, 60), np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(UserError, match=r"q_proj\.weight has shape \(64, 60\) but the config implies \(64, 64\)"):
        load_model(str(d))


def test_config_contradicting_weights(tmp_path, shared_dir):
    d = _copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_layers"], cfg["attention_types"] = 2, [[["global", "local"], 1]]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"does not account for 26 tensor\(s\).*transformer\.h\.2.*2 layers"):
        load_model(str(d))


def test_offline_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_model("EleutherAI/gpt-neo-125m")


# ------------------------------------------------------------------ dropout rates


def test_dropout_rates_read_from_hf_configs(tmp_path):
    from mbc_jax.models.config import config_from_hf

    neo = config_from_hf(dict(model_type="gpt_neo", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                              max_position_embeddings=64, embed_dropout=0.1, attention_dropout=0.2, resid_dropout=0.3))
    assert (neo.embed_dropout, neo.attention_dropout, neo.resid_dropout) == (0.1, 0.2, 0.3)
    opt = config_from_hf(dict(model_type="opt", vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                              num_attention_heads=4, max_position_embeddings=64, dropout=0.1, attention_dropout=0.0))
    # HF OPT drops out the two residual branches (and attention probabilities), not the embeddings
    assert (opt.embed_dropout, opt.attention_dropout, opt.resid_dropout) == (0.0, 0.0, 0.1)
    with pytest.raises(UserError, match=r"cfg.json: resid_dropout: expected a dropout rate in \[0, 1\), got 1.5"):
        config_from_hf(dict(model_type="gpt_neo", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                            max_position_embeddings=64, resid_dropout=1.5), "cfg.json")


def test_dropout_function_zeroes_its_rate_and_rescales_the_rest():
    from mbc_jax.models.transformer import dropout

    x = jax.random.normal(jax.random.key(0), (400, 500))
    y = np.asarray(dropout(x, 0.3, jax.random.key(1)))
    kept = y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.005  # 200k Bernoulli draws: 5 standard deviations is 0.005
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.7, rtol=1e-6)


@pytest.mark.parametrize("cut", ["half", "last_bytes", "garbage"])
def test_truncated_or_corrupt_safetensors_is_one_line_naming_the_file(tmp_path, cut):
    """Issue 30: a partial download of model.safetensors was a 32-line traceback in info, score and generate."""
    from mbc_jax.models.hf_io import open_weights

    src = FIXTURES / "gpt_neo_tiny" / "model.safetensors"
    data = src.read_bytes()
    body = {"half": data[: len(data) // 2], "last_bytes": data[:-10], "garbage": b"garbage"}[cut]
    (tmp_path / "model.safetensors").write_bytes(body)
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file .*partial download"):
        open_weights(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == body  # nothing touched
