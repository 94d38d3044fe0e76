"""Samplers without a model: the uniform baseline, MBC's weights and draws (Algorithm 1), its
re-scoring schedule and the incremental refresh, driven by a fake `score_fn`."""

from __future__ import annotations

import numpy as np
import pytest

from mbc_jax.samplers import MBCSampler, UniformSampler, make_sampler, mbc_weights, record_perplexity


class FakeScores:
    """What a scorer returns, for the records it scored: response and full-dialogue perplexities."""

    def __init__(self, response: np.ndarray, full: np.ndarray):
        self.response, self.full = np.asarray(response, float), np.asarray(full, float)

    def perplexity(self, response: bool = False) -> np.ndarray:
        return self.response if response else self.full


class FakeScorer:
    """score_fn(params, order, count): perplexity of record i = params[i]; scores order[:count] plus
    `extra` more records of `order` (a scorer topping up its packed batches); logs every call."""

    def __init__(self, extra: int = 0):
        self.extra, self.calls = extra, []

    def __call__(self, params, order, count):
        which = np.asarray(order[:count + self.extra])
        self.calls.append((which.copy(), count))
        ppl = np.asarray(params, float)[which]
        return which, FakeScores(ppl, ppl * 10)


def test_uniform_sampler_is_a_permutation_per_epoch():
    s = UniformSampler(num_records=10, batch_size=4, seed=0)
    draws = np.concatenate([s.draw(step) for step in range(5)])  # 20 draws = 2 epochs
    assert sorted(draws[:10]) == list(range(10)) and sorted(draws[10:20]) == list(range(10))
    assert not np.array_equal(draws[:10], draws[10:20])  # reshuffled
    assert (s.counts == 2).all()
    fresh = UniformSampler(10, 4, seed=0)
    np.testing.assert_array_equal(fresh.indices(3), s.indices(3))  # pure function of (seed, step)


def test_mbc_weights_proportional_with_floor():
    ppl = np.array([1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(mbc_weights(ppl, floor=0.0), ppl / ppl.sum())
    p = mbc_weights(ppl, floor=0.2)
    np.testing.assert_allclose(p, 0.8 * ppl / ppl.sum() + 0.2 / 4)
    assert p.min() >= 0.2 / 4
    np.testing.assert_allclose(mbc_weights(ppl, power=0.0, floor=0.0), 0.25)
    np.testing.assert_allclose(mbc_weights(ppl, power=2.0, floor=0.0), ppl**2 / (ppl**2).sum())
    # a record with no finite perplexity counts as the least memorized
    np.testing.assert_allclose(mbc_weights(np.array([1.0, np.nan, 3.0]), floor=0.0), [1 / 7, 3 / 7, 3 / 7])


def test_mbc_sampler_draw_frequencies_follow_weights():
    n, batch = 6, 64
    s = MBCSampler(n, batch, seed=1, power=1.0, floor=0.0)
    ppl = np.array([1.0, 1.0, 2.0, 2.0, 4.0, 10.0])
    s.set_perplexities(ppl, step=0)
    steps = 400
    for step in range(steps):
        s.draw(step)
    freq = s.counts / (steps * batch)
    want = ppl / ppl.sum()
    # multinomial: 4 standard errors
    se = np.sqrt(want * (1 - want) / (steps * batch))
    assert (np.abs(freq - want) < 4 * se).all(), (freq, want)
    # pure function of (seed, step, weights)
    other = MBCSampler(n, batch, seed=1, floor=0.0)
    other.set_perplexities(ppl, step=0)
    np.testing.assert_array_equal(other.indices(123), s.indices(123))
    assert not np.array_equal(other.indices(124), s.indices(123))


def test_mbc_stalest_records():
    s = MBCSampler(5, 2, seed=0)
    s.set_perplexities(np.ones(5), step=0)
    s.set_perplexities(np.ones(2), step=3, which=np.array([0, 4]))
    np.testing.assert_array_equal(s.stalest(0.6), [1, 2, 3])


def test_uniform_sampler_hooks_do_nothing():
    s = UniformSampler(10, 4, seed=0)
    scorer = FakeScorer()
    s.before_step(0, np.arange(10.0), scorer)
    s.after_step(0, np.array([[0, 1, -1]]), {"nll": np.ones((1, 3)), "count": np.ones((1, 3))})
    assert scorer.calls == [] and (s.counts == 0).all()
    assert not s.uses_step_losses
    np.testing.assert_allclose(s.probabilities(), 0.1)


def test_mbc_rescores_all_records_every_k_steps():
    """Algorithm 1: at steps 0, k, 2k, ... every record is re-scored and weights follow perplexity."""
    n, k = 8, 3
    s = MBCSampler(n, 2, seed=0, floor=0.0, k=k, response=True)
    scorer = FakeScorer()
    params = np.arange(1.0, n + 1)
    for step in range(7):
        s.before_step(step, params * (step + 1), scorer)
        s.draw(step)
    assert [int(len(w)) for w, _ in scorer.calls] == [n, n, n]  # steps 0, 3, 6
    np.testing.assert_array_equal(s.scored_step, 6)
    np.testing.assert_allclose(s.perplexity, params * 7)  # the response perplexity of the step-6 model
    np.testing.assert_allclose(s.probabilities(), params / params.sum())


def test_mbc_uses_the_configured_perplexity_and_falls_back_to_full():
    s = MBCSampler(3, 1, seed=0, floor=0.0, k=1, response=False)
    s.before_step(0, np.array([1.0, 2.0, 3.0]), FakeScorer())
    np.testing.assert_allclose(s.perplexity, [10.0, 20.0, 30.0])  # the full-dialogue perplexity
    fallback = record_perplexity(FakeScores([2.0, np.nan], [5.0, 7.0]), response=True)
    np.testing.assert_allclose(fallback, [2.0, 7.0])  # no response targets: the dialogue's


def test_make_sampler_reads_the_config():
    from mbc_jax import config as config_lib

    cfg = config_lib.load(None, ["sampler=mbc", "mbc.metric=loss", "loss_on=full", "mbc.power=2",
                                 "mbc.refresh=incremental", "mbc.refresh_fraction=0.25"])
    s = make_sampler(cfg, 40, k=5)
    assert isinstance(s, MBCSampler) and (s.k, s.power, s.response, s.refresh) == (5, 2.0, False, "incremental")
    assert s.refresh_fraction == 0.25 and s.floor == cfg.mbc.floor
    assert make_sampler(config_lib.load(None, ["sampler=mbc"]), 40, k=5).response  # loss_on response
    assert isinstance(make_sampler(config_lib.load(None, ["sampler=uniform"]), 40, k=5), UniformSampler)


def test_incremental_refresh_rescores_the_stalest_fraction_after_step_zero():
    n = 20
    s = MBCSampler(n, 4, seed=0, floor=0.0, k=2, refresh="incremental", refresh_fraction=0.1)
    scorer = FakeScorer(extra=1)
    params = np.arange(1.0, n + 1)
    s.before_step(0, params, scorer)  # step 0: everything
    assert len(scorer.calls[-1][0]) == n
    s.set_perplexities(np.ones(n - 5), step=1, which=np.arange(5, n))  # 0..4 are now the stalest
    s.before_step(1, params, scorer)  # not due
    assert len(scorer.calls) == 1
    s.before_step(2, params * 2, scorer)
    which, count = scorer.calls[-1]
    assert count == 2  # round(0.1 * 20)
    np.testing.assert_array_equal(which, [0, 1, 2])  # the 2 stalest, and the one the scorer topped up with
    np.testing.assert_array_equal(s.scored_step[:3], 2)
    np.testing.assert_allclose(s.perplexity[:3], params[:3] * 2)
    np.testing.assert_allclose(s.perplexity[3:5], params[3:5])  # still the step-0 values


def test_incremental_after_step_takes_perplexity_from_the_step_losses():
    s = MBCSampler(6, 4, seed=0, refresh="incremental")
    record_index = np.array([[3, 5, -1], [0, -1, -1]])
    nll = np.array([[2.0, 3.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    count = np.array([[2.0, 0.0, 0.0], [4.0, 0.0, 0.0]], np.float32)  # record 5 had no loss targets
    s.after_step(7, record_index, {"nll": nll, "count": count})
    np.testing.assert_allclose(s.perplexity[[3, 0]], np.exp([1.0, 0.25]), rtol=1e-6)
    assert s.perplexity[5] == 1.0 and s.scored_step[5] == -1
    np.testing.assert_array_equal(s.scored_step[[3, 0]], 7)
    full = MBCSampler(6, 4, seed=0, refresh="full")
    full.after_step(7, record_index, {"nll": nll, "count": count})
    assert (full.scored_step == -1).all()
    assert s.uses_step_losses and not full.uses_step_losses  # Algorithm 1 itself ignores the step losses


def test_mbc_state_round_trip_resumes_the_same_draws():
    s = MBCSampler(10, 4, seed=3, floor=0.0, k=2)
    s.before_step(0, np.arange(1.0, 11), FakeScorer())
    for step in range(3):
        s.draw(step)
    other = MBCSampler(10, 4, seed=3, floor=0.0, k=2)
    other.load_state(s.state())
    np.testing.assert_array_equal(other.counts, s.counts)
    np.testing.assert_array_equal(other.indices(3), s.indices(3))


def test_mbc_rejects_an_unknown_refresh_mode():
    with pytest.raises(ValueError, match="refresh"):
        MBCSampler(4, 2, seed=0, refresh="sometimes")


def test_default_mbc_is_algorithm_1_proportional_to_perplexity():
    """The paper's Algorithm 1: no floor, power 1, so p_i = ppl_i / sum_j ppl_j, by default and in
    every shipped config."""
    from pathlib import Path

    import yaml

    from mbc_jax import config as config_lib

    s = make_sampler(config_lib.load(None, ["sampler=mbc"]), 5, k=1)
    ppl = np.array([1.0, 1.5, 3.0, 7.0, 12.5])
    s.set_perplexities(ppl, step=0)
    np.testing.assert_allclose(s.probabilities(), ppl / ppl.sum(), rtol=1e-12)
    np.testing.assert_allclose(mbc_weights(ppl), ppl / ppl.sum(), rtol=1e-12)
    configs = sorted((Path(__file__).resolve().parents[2] / "experiments" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        mbc = (yaml.safe_load(path.read_text()) or {}).get("mbc", {})
        assert mbc.get("floor", 0.0) == 0.0 and mbc.get("power", 1.0) == 1.0, path.name


def test_weight_health_on_hand_made_weights():
    """Issue 29: effective sample size, largest weight, the top 1%'s share and distinct records drawn."""
    from mbc_jax.samplers import weight_health

    uniform = weight_health(np.full(200, 1 / 200), np.array([1] * 50 + [0] * 150))
    assert uniform["ess"] == pytest.approx(200) and uniform["ess_share"] == pytest.approx(1.0)
    assert uniform["max_weight"] == pytest.approx(1 / 200) and uniform["top1pct_share"] == pytest.approx(2 / 200)
    assert uniform["distinct_drawn"] == 50
    collapse = np.full(100, 0.01 / 99)
    collapse[7] = 0.99  # one record holds 99% of the weight
    h = weight_health(collapse, np.zeros(100))
    assert h["ess"] == pytest.approx(1 / (0.99**2 + 99 * (0.01 / 99) ** 2)) and h["ess"] < 1.03
    assert h["max_weight"] == pytest.approx(0.99) and h["top1pct_share"] == pytest.approx(0.99)
    assert h["heaviest"][0] == 7 and h["distinct_drawn"] == 0
    two = weight_health(np.array([0.5, 0.5, 0.0, 0.0]), np.array([3, 1, 0, 0]))
    assert two["ess"] == pytest.approx(2.0) and two["ess_share"] == pytest.approx(0.5)
    assert two["heaviest"][:2] == [0, 1] and two["distinct_drawn"] == 2
