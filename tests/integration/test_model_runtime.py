"""The model's runtime options against the plain forward pass: remat, bfloat16, blocked and per-head
attention, attention probabilities collected with `sow`, and dropout (training only, a function of
the key, the same sharded, replayed by remat)."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest

from conftest import FIXTURES, reference
from mbc_jax.models import init_model, load_model
from mbc_jax.sharding import make_mesh

# ------------------------------------------------------------------ dtypes and remat


@pytest.mark.parametrize("name", ["gpt_neo_tiny", "pythia_tiny", "llama_gqa_tiny"])
def test_remat_gives_the_same_logits_and_gradients(name, shared_dir):
    import jax.numpy as jnp

    ref = reference(name)
    ids = jnp.asarray(ref["input_ids"])
    grads = {}
    for remat in ("none", "full", "dots"):
        model = load_model(str(FIXTURES / name), mesh=make_mesh("1,1,1"), remat=remat)
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
