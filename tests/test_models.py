"""Models: HF fixture parity, other configs against HF PyTorch (when torch is installed),
checkpoint formats, export round trips, sharded == single-device, and bad checkpoints."""

from __future__ import annotations

import functools
import json
import shutil

import jax
import numpy as np
import pytest

from conftest import FIXTURE_NAMES, FIXTURES
from mbc_jax import UserError
from mbc_jax.models import export_model, init_model, load_model
from mbc_jax.sharding import make_mesh

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed: HF PyTorch cross-check skipped")


def reference(name: str):
    return np.load(FIXTURES / name.replace("_sharded", "") / "reference.npz")


def real_max_err(logits, ref) -> float:
    mask = ref["attention_mask"].astype(bool)
    return float(np.abs(np.asarray(logits) - ref["logits"])[mask].max())


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


def _padded_batch(vocab: int, lengths=(29, 17, 8), seed: int = 0):
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(3, vocab, n)
        mask[b, :n] = 1
    return ids, mask


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


@pytest.mark.parametrize("name", ["gpt_neo_tiny", "opt_projected_postln"])
def test_export_round_trip(name, tmp_path, shared_dir):
    model = load_model(str(FIXTURES / name))
    export_model(model, tmp_path / "export")
    again = load_model(str(tmp_path / "export"))
    ref = reference(name)
    a = np.asarray(model.apply(ref["input_ids"], segment_ids=ref["attention_mask"]))
    b = np.asarray(again.apply(ref["input_ids"], segment_ids=ref["attention_mask"]))
    np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_type"] == model.config.model_type


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


def test_export_with_tokenizer(tmp_path, shared_dir):
    from transformers import AutoTokenizer

    model = load_model(str(FIXTURES / "gpt_neo_tiny"))
    model.tokenizer = AutoTokenizer.from_pretrained(str(shared_dir / "tokenizers" / "gpt-neo-125M"))
    export_model(model, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok("Human: hi")["input_ids"] == model.tokenizer("Human: hi")["input_ids"]
    assert load_model(str(tmp_path)).tokenizer.eos_token_id == 50256


# ------------------------------------------------------------------ sharding

MESH_CONFIG = dict(  # 8 heads, mlp 128, vocab 128: every mesh below divides it
    model_type="gpt_neo", vocab_size=128, hidden_size=64, num_layers=2, num_heads=8, window_size=4,
    attention_types=[[["global", "local"], 1]], max_position_embeddings=32, intermediate_size=128,
)


@pytest.fixture(scope="module")
def single_device_reference():
    model = init_model(MESH_CONFIG, mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=3)
    ids, mask = _padded_batch(128, lengths=(16, 9, 12, 3, 16, 7, 1, 10))
    return model, ids, mask, np.asarray(model.apply(ids, segment_ids=mask))


@pytest.mark.parametrize("mesh", ["8,1,1", "2,4,1", "2,2,2", "1,1,8", "1,8,1"])
def test_sharded_logits_equal_single_device(mesh, single_device_reference, tmp_path):
    assert len(jax.devices()) == 8
    single, ids, mask, want = single_device_reference
    export_model(single, tmp_path)
    model = load_model(str(tmp_path), mesh=make_mesh(mesh))
    got = np.asarray(model.apply(ids, segment_ids=mask))
    real = mask.astype(bool)
    assert np.abs(got - want)[real].max() < 1e-5
    # parameters really are split: the q kernel's heads over tensor, embed over fsdp
    q = model.params["layers"]["attn"]["q"]["kernel"]
    d, f, t = map(int, mesh.split(","))
    assert q.addressable_shards[0].data.shape == (2, 64 // f, 64 // t)


def test_random_init_is_sharded_at_creation():
    model = init_model(MESH_CONFIG, mesh=make_mesh("1,2,4"), seed=0)
    emb = model.params["embed_tokens"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (128 // 4, 64 // 2)


def test_mesh_that_does_not_divide_heads_is_a_clear_error(shared_dir):
    with pytest.raises(UserError, match=r"does not divide the model: 4 attention heads \('heads'\) "
                                        r"are not divisible by the tensor axis \(8\)"):
        load_model(str(FIXTURES / "gpt_neo_tiny"), mesh=make_mesh("1,1,8"))


@pytest.mark.parametrize("spec,msg", [("9,1,1", "needs 9 devices but 8 are available"), ("a,b", "three integers"),
                                      ("-1,-1,1", "at most one -1"), ("3,-1,1", "not divisible by 3")])
def test_bad_mesh_specs(spec, msg):
    with pytest.raises(UserError, match=msg):
        make_mesh(spec)


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
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"model_type: 'llama' is not supported \(supported: gpt_neo, opt\)"):
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


# ------------------------------------------------------------------ dtypes and remat


def test_remat_gives_the_same_logits_and_gradients(shared_dir):
    import jax.numpy as jnp

    ref = reference("gpt_neo_tiny")
    ids = jnp.asarray(ref["input_ids"])
    grads = {}
    for remat in ("none", "full", "dots"):
        model = load_model(str(FIXTURES / "gpt_neo_tiny"), mesh=make_mesh("1,1,1"), remat=remat)
        loss = lambda p, model=model: model.module.apply({"params": p}, ids).astype(jnp.float32).std()  # noqa: E731
        grads[remat] = jax.jit(jax.grad(loss))(model.params)
    for remat in ("full", "dots"):
        for a, b in zip(jax.tree_util.tree_leaves(grads["none"]), jax.tree_util.tree_leaves(grads[remat])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_bfloat16_compute_and_params(shared_dir):
    ref = reference("opt_tiny")
    real = ref["attention_mask"].astype(bool)
    for runtime in (dict(dtype="bfloat16"), dict(dtype="bfloat16", param_dtype="bfloat16")):
        model = load_model(str(FIXTURES / "opt_tiny"), mesh=make_mesh("1,1,1"), **runtime)
        leaf = model.params["layers"]["attn"]["q"]["kernel"]
        assert str(leaf.dtype) == runtime.get("param_dtype", "float32")
        logits = np.asarray(model.apply(ref["input_ids"], segment_ids=ref["attention_mask"]), np.float32)
        assert model.apply(ref["input_ids"]).dtype == jax.numpy.bfloat16
        err = np.abs(logits - ref["logits"])[real]
        assert err.max() < 0.1  # bf16 has ~3 significant digits
        agree = (logits.argmax(-1) == ref["logits"].argmax(-1))[real].mean()
        assert agree > 0.9


def _packed_rows(b: int = 4, t: int = 64, seed: int = 3):
    """Random records packed along rows (segments, positions restarting), then padding."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    for r in range(b):
        i, s = 0, 1
        while i < t - 6:
            n = min(int(rng.integers(3, 40)), t - 4 - i)
            seg[r, i:i + n], pos[r, i:i + n] = s, np.arange(n)
            i, s = i + n, s + 1
    return rng.integers(0, 64, (b, t)).astype(np.int32), pos, seg


def _logits_and_grads(ids, pos, seg, mesh: str, **runtime):
    import jax.numpy as jnp

    model = load_model(str(FIXTURES / "gpt_neo_tiny"), mesh=make_mesh(mesh), with_tokenizer=False, **runtime)
    fwd = lambda p: model.module.apply({"params": p}, ids, pos, seg)  # noqa: E731
    loss = lambda p: (fwd(p) * (seg != 0)[..., None]).astype(jnp.float32).std()  # noqa: E731
    return fwd(model.params), jax.grad(loss)(model.params)


def test_blocked_attention_equals_one_score_matrix(shared_dir):
    """Causal block skipping and the per-head loop are pure reorganizations: packed rows with
    several records, padding and local windows (window 8, records up to 39 tokens, blocks of 16)
    give the logits and gradients of one full masked score matrix, on one device and sharded."""
    ids, pos, seg = _packed_rows()
    ref_logits, ref_grads = _logits_and_grads(ids, pos, seg, "1,1,1", attention_impl="einsum", attention_block=0)
    real = seg != 0
    for impl, mesh in (("einsum", "1,1,1"), ("per_head", "2,2,2")):
        logits, grads = _logits_and_grads(ids, pos, seg, mesh, attention_impl=impl, attention_block=16)
        np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(ref_logits)[real], rtol=1e-5, atol=1e-5,
                                   err_msg=f"{impl} on {mesh}")
        for a, c in zip(jax.tree_util.tree_leaves(ref_grads), jax.tree_util.tree_leaves(grads)):
            np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-7, err_msg=f"{impl} on {mesh}")


# ------------------------------------------------------------------ attention probabilities (sow)


def _reference_probs(q, k, pos, seg, windows, scale: float) -> np.ndarray:
    """Float64 softmax of q . k [L, B, T, H, D] under the model's mask rule, written out: same
    non-padding segment, causal by position, within the layer's window. [L, B, H, T, T]."""
    scores = np.einsum("lbqhd,lbkhd->lbhqk", q.astype(np.float64) * scale, k.astype(np.float64))
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    dist = pos[:, :, None] - pos[:, None, :]
    allowed = same[None] & (dist[None] >= 0) & (dist[None] < np.asarray(windows)[:, None, None, None])
    scores = np.where(allowed[:, :, None], scores, -np.inf)
    with np.errstate(invalid="ignore"):  # padding queries see nothing: nan rows, never compared
        e = np.exp(scores - scores.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", ["gpt_neo_tiny", "opt_projected_postln"])
def test_sown_attention_probs_are_each_layers_softmax(name, shared_dir):
    """`apply(..., mutable=["intermediates"])` returns every layer's attention probabilities: the
    softmax of that layer's own q . k scores (recomputed in float64 from the q and k projections the
    same forward pass computed), masked causally, within the layer's window, to its own segment.
    Packed rows with local windows, under the per-head loop and causal blocks the model would
    otherwise pick (the sow path takes one score matrix); the logits stay those of the plain forward.
    With a KV cache the probabilities span the cache, zero on its unwritten slots."""
    from mbc_jax.models import init_cache, sown_attention_probs
    from mbc_jax.models.transformer import Linear

    model = load_model(str(FIXTURES / name), mesh=make_mesh("1,1,1"), with_tokenizer=False,
                       attention_impl="per_head", attention_block=16)
    cfg, apply = model.config, functools.partial(model.module.apply, {"params": model.params})
    ids, pos, seg = _packed_rows()
    ids = ids % cfg.vocab_size
    real = seg != 0
    plain = np.asarray(apply(ids, pos, seg))
    is_qk = lambda mdl, _: isinstance(mdl, Linear) and mdl.name in ("q", "k")  # noqa: E731
    logits, state = apply(ids, pos, seg, mutable=["intermediates"], capture_intermediates=is_qk)
    probs = np.asarray(sown_attention_probs(state))
    b, t = ids.shape
    assert probs.shape == (cfg.num_layers, b, cfg.num_heads, t, t) and probs.dtype == np.float32
    layers = state["intermediates"]["layers"]["attn"]
    q, k = (np.asarray(layers[n]["__call__"][0]).reshape(cfg.num_layers, b, t, cfg.num_heads, -1) for n in "qk")
    want = _reference_probs(q, k, pos, seg, cfg.layer_windows, cfg.head_dim ** -0.5 if cfg.attention_scale else 1.0)
    rows = np.broadcast_to(real[None, :, None, :, None], probs.shape)  # real query rows
    np.testing.assert_allclose(probs[rows], want[rows], rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(logits)[real], plain[real], rtol=1e-5, atol=1e-5)

    cache = init_cache(cfg, b, t + 8)
    (_, _), state = apply(ids, pos, seg, cache=cache, mutable=["intermediates"])
    cached = np.asarray(sown_attention_probs(state))
    assert cached.shape == (cfg.num_layers, b, cfg.num_heads, t, t + 8)
    # another program (scores over the whole cache): its rounding differs
    np.testing.assert_allclose(cached[..., :t][rows], probs[rows], rtol=0, atol=1e-5)
    assert np.all(cached[..., t:][rows[..., :8]] == 0)


# ------------------------------------------------------------------ dropout (training only)


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


def _dropout_model(mesh: str, rate: float, impl: str = "einsum"):
    cfg = json.loads((FIXTURES / "gpt_neo_tiny" / "config.json").read_text())
    cfg.update(embed_dropout=rate, attention_dropout=rate, resid_dropout=rate)
    return init_model(cfg, mesh=make_mesh(mesh), seed=0, attention_impl=impl, attention_block=16)


def test_dropout_applies_only_in_training_and_is_a_function_of_the_key(shared_dir):
    """Inference ignores the rates; training with a key is reproducible, differs between keys, and
    with a vanishing rate (nothing dropped) computes exactly the inference function. Sharded over
    2 x 2 x 2 devices, the same key drops the same elements as on one device."""
    ids, pos, seg = _packed_rows()
    real = seg != 0
    plain = _dropout_model("1,1,1", 0.0)
    model = _dropout_model("1,1,1", 0.2)
    ref = np.asarray(plain.module.apply({"params": plain.params}, ids, pos, seg))
    np.testing.assert_array_equal(np.asarray(model.module.apply({"params": model.params}, ids, pos, seg)), ref)

    def train_logits(m, key):
        return np.asarray(m.module.clone(deterministic=False).apply(
            {"params": m.params}, ids, pos, seg, rngs={"dropout": jax.random.key(key)}))

    a, b, c = train_logits(model, 0), train_logits(model, 0), train_logits(model, 1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - ref)[real].mean() > 0.01 and np.abs(a - c)[real].mean() > 0.01
    for impl in ("einsum", "per_head"):
        tiny = train_logits(_dropout_model("1,1,1", 1e-9, impl), 0)
        np.testing.assert_allclose(tiny[real], ref[real], rtol=1e-5, atol=1e-5, err_msg=impl)
    sharded = train_logits(_dropout_model("2,2,2", 0.2), 0)
    np.testing.assert_allclose(sharded[real], a[real], rtol=1e-5, atol=1e-5)


def test_remat_replays_the_dropout_masks(shared_dir):
    """A rematerialized layer recomputes its forward with the same dropout masks: the gradients
    equal those of the stored forward."""
    import jax.numpy as jnp

    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 32)))
    grads = {}
    model = _dropout_model("1,1,1", 0.2)
    for remat in ("none", "full"):
        m = model.module.clone(cfg=model.module.cfg.replace(remat=remat), deterministic=False)
        loss = lambda p, m=m: m.apply(  # noqa: E731
            {"params": p}, ids, rngs={"dropout": jax.random.key(3)}
        ).astype(jnp.float32).std()
        grads[remat] = jax.jit(jax.grad(loss))(model.params)
    for a, b in zip(jax.tree_util.tree_leaves(grads["none"]), jax.tree_util.tree_leaves(grads["full"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-8)
