"""8 virtual CPU devices: a model's logits on five meshes equal the single-device ones, with the
parameters really split, and random init is sharded at creation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import FIXTURES, _padded_batch, real_max_err, reference
from mbc_jax.models import export_model, init_model, load_model
from mbc_jax.sharding import make_mesh

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


def test_gqa_model_splits_its_key_value_heads_over_tensor(shared_dir):
    """llama_gqa_tiny (4 query heads, 2 key/value heads of 16 dims) on data 2 x fsdp 2 x tensor 2:
    each device holds one key/value head and its two query heads; the logits are the fixture's."""
    model = load_model(str(FIXTURES / "llama_gqa_tiny"), mesh=make_mesh("2,2,2"))
    ref = reference("llama_gqa_tiny")
    assert real_max_err(model.apply(ref["input_ids"], segment_ids=ref["attention_mask"]), ref) < 1e-4
    attn = model.params["layers"]["attn"]
    assert attn["k"]["kernel"].addressable_shards[0].data.shape == (3, 64 // 2, 2 * 16 // 2)
    assert attn["q"]["kernel"].addressable_shards[0].data.shape == (3, 64 // 2, 4 * 16 // 2)
