"""mbc_jax/sharding.py: mesh specs, and a mesh that does not divide the model."""

from __future__ import annotations

import pytest

from conftest import FIXTURES
from mbc_jax import UserError
from mbc_jax.models import load_model
from mbc_jax.sharding import make_mesh


def test_mesh_that_does_not_divide_heads_is_a_clear_error(shared_dir):
    with pytest.raises(UserError, match=r"does not divide the model: 4 attention heads \('heads'\) "
                                        r"are not divisible by the tensor axis \(8\)"):
        load_model(str(FIXTURES / "gpt_neo_tiny"), mesh=make_mesh("1,1,8"))


def test_tensor_axis_must_divide_the_key_value_heads(shared_dir):
    """llama_gqa_tiny: 4 query heads on 2 key/value heads; tensor 4 divides the former, not the latter."""
    with pytest.raises(UserError, match=r"does not divide the model: 2 key/value heads \('heads'\) "
                                        r"are not divisible by the tensor axis \(4\); "
                                        r"use a tensor size that divides 2"):
        load_model(str(FIXTURES / "llama_gqa_tiny"), mesh=make_mesh("1,2,4"))


@pytest.mark.parametrize("spec,msg", [("9,1,1", "needs 9 devices but 8 are available"), ("a,b", "three integers"),
                                      ("-1,-1,1", "at most one -1"), ("3,-1,1", "not divisible by 3")])
def test_bad_mesh_specs(spec, msg):
    with pytest.raises(UserError, match=msg):
        make_mesh(spec)
