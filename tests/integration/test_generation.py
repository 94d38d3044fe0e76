"""Generation, the heavier checks: greedy parity with every HF fixture (batched and alone), a
2 x 2 x 2 mesh, and left padding in a larger bucket."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURE_NAMES, FIXTURES, GREEDY, N, prompt_set, reference
from mbc_jax.generate import generate
from mbc_jax.models import load_model


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_greedy_reproduces_fixture(name, shared_dir):
    model = load_model(str(FIXTURES / name))
    ref = reference(name)
    batched = generate(model, prompt_set(ref), GREEDY)
    alone = generate(model, [ref["greedy_prompt"]], GREEDY)
    for g in (batched[0], alone[0]):
        np.testing.assert_array_equal(g.output_ids, ref["greedy_continuation"])
        assert g.stopped == "length" and g.num_tokens == N
        assert g.sampling_entropy == 0.0
    np.testing.assert_allclose(batched[0].token_entropy, alone[0].token_entropy, atol=1e-5)


def test_tensor_and_fsdp_mesh_gives_the_same_tokens(neo_greedy, shared_dir):
    from mbc_jax.sharding import make_mesh

    model = load_model(str(FIXTURES / "gpt_neo_tiny"), mesh=make_mesh("2,2,2"))
    got = generate(model, prompt_set(reference("gpt_neo_tiny")), GREEDY)
    for g, want in zip(got, neo_greedy):
        np.testing.assert_array_equal(g.output_ids, want.output_ids)
        np.testing.assert_allclose(g.token_entropy, want.token_entropy, atol=1e-5)


def test_gqa_model_on_a_tensor_mesh_reproduces_its_fixture(shared_dir):
    """The KV cache of llama_gqa_tiny holds its 2 key/value heads, split over tensor 2."""
    from mbc_jax.models import init_cache
    from mbc_jax.sharding import make_mesh

    model = load_model(str(FIXTURES / "llama_gqa_tiny"), mesh=make_mesh("2,2,2"))
    cache = init_cache(model.config, 2, 8)  # per layer: [B, KV heads, slots, head_dim]
    assert len(cache["k"]) == len(cache["v"]) == 3 and cache["k"][0].shape == (2, 2, 8, 16)
    ref = reference("llama_gqa_tiny")
    got = generate(model, prompt_set(ref), GREEDY)
    np.testing.assert_array_equal(got[0].output_ids, ref["greedy_continuation"])


def test_left_padding_does_not_change_results(neo, neo_greedy):
    """The same prompts in a 64-token bucket next to a 40-token prompt, in another order."""
    ref = reference("gpt_neo_tiny")
    fix, p20, p3 = prompt_set(ref)
    p40 = np.arange(40) * 7 % 512
    out = generate(neo, [p40, p3, fix, p20], GREEDY)
    for got, want in zip(out[1:], [neo_greedy[2], neo_greedy[0], neo_greedy[1]]):
        np.testing.assert_array_equal(got.output_ids, want.output_ids)
        np.testing.assert_allclose(got.token_entropy, want.token_entropy, atol=1e-5)
    np.testing.assert_array_equal(out[2].output_ids, ref["greedy_continuation"])
