"""Scorer layouts agree: packed == one record per row == bucketed == a plain full-logits forward
pass, and sharded == single device on three meshes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._buckets import bucket
from conftest import random_examples
from mbc_jax.data import pack
from mbc_jax.models import load_model
from mbc_jax.scoring import Scorer
from mbc_jax.sharding import make_mesh


@pytest.mark.parametrize("which", ["tiny_model", "tiny_rope_model"])
def test_packed_equals_unpacked(which, request):
    """GPT-Neo (learned positions, a local layer) and Mistral-style (RoPE, GQA, window 6): RoPE
    positions restart per packed record as learned ones do."""
    tiny_model = request.getfixturevalue(which)
    examples = random_examples(40, 96)
    scorer = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=256)
    packed_batches = pack(examples, 64, 4)
    assert max((b.record_index >= 0).sum(1).max() for b in packed_batches) > 2  # really several per row
    packed = scorer(tiny_model.params, examples, packed_batches)
    alone = scorer(tiny_model.params, examples, pack(examples, 64, 4, max_segments=1))
    bucketed = scorer(tiny_model.params, examples, bucket(examples, (16, 32, 64), 256))
    for other in (alone, bucketed):
        for k in packed.sums:
            np.testing.assert_allclose(packed.sums[k], other.sums[k], rtol=2e-5, atol=1e-5, err_msg=k)
    # and each record alone through the plain forward pass (full logits, no chunking)
    for i in (0, 7, 23):
        ex = examples[i]
        logits = np.asarray(tiny_model.apply(ex.input_ids[None]), np.float64)[0, :-1]
        logp = (logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
                - logits.max(-1, keepdims=True))
        nll = -logp[np.arange(len(ex) - 1), ex.input_ids[1:]]
        assert packed.perplexity()[i] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
        match = (logits.argmax(-1) == ex.input_ids[1:])
        assert packed.exact_match()[i] == pytest.approx(match.mean())
        resp = ex.response_mask[1:]
        assert packed.exact_match(True)[i] == pytest.approx(match[resp].mean())


@pytest.mark.parametrize("mesh,which", [("8,1,1", "tiny_model"), ("2,2,2", "tiny_model"), ("1,4,2", "tiny_model"),
                                        ("1,2,2", "tiny_rope_model")])
def test_sharded_scores_equal_single_device(mesh, which, request, tmp_path):
    """Also tensor parallelism over the key/value heads of a GQA model (tensor 2 = its 2 KV heads)."""
    from mbc_jax.models import export_model

    tiny_model = request.getfixturevalue(which)
    examples = random_examples(50, 96, seed=3)
    want = Scorer(tiny_model.module, tiny_model.mesh, seq_len=64, tokens_per_batch=512)(tiny_model.params, examples)
    export_model(tiny_model, tmp_path)
    sharded = load_model(str(tmp_path), mesh=make_mesh(mesh))
    got = Scorer(sharded.module, sharded.mesh, seq_len=64, tokens_per_batch=512)(sharded.params, examples)
    for k in want.sums:
        np.testing.assert_allclose(got.sums[k], want.sums[k], rtol=1e-5, atol=1e-4, err_msg=k)
