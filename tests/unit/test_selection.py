"""mbc_jax/selection: the pair schedule under the call bound, and the games built for the judge."""

import itertools

import numpy as np
import pytest

from mbc_jax import UserError
from mbc_jax.commands import select as select_command
from mbc_jax.selection import DEFAULT_DEV, DEFAULT_MAX_CALLS, schedule, tournament


def test_round_robin_when_it_fits():
    s = schedule(4, 5, max_calls=60, calls_per_judgment=2)
    assert s.pairs == list(itertools.combinations(range(4), 2)) and s.scheme == "round robin"
    assert s.calls == s.round_robin_calls == 6 * 5 * 2


@pytest.mark.parametrize("max_calls", [140, 150, 179, 200, 10_000])
def test_adjacent_plus_seeded_sample_within_the_bound(max_calls):
    k, prompts, per = 8, 5, 2  # 28 pairs, 10 calls each: round robin 280
    s = schedule(k, prompts, max_calls, per, seed=1)
    assert s.calls == len(s.pairs) * prompts * per <= max_calls
    assert len(set(s.pairs)) == len(s.pairs) and all(i < j for i, j in s.pairs)
    if max_calls >= 280:
        assert s.scheme == "round robin"
        return
    assert s.scheme == "adjacent + sample"
    assert {(i, i + 1) for i in range(k - 1)} <= set(s.pairs)
    assert len(s.pairs) == max_calls // (prompts * per)  # the budget is used up to whole pairs
    assert s.pairs == schedule(k, prompts, max_calls, per, seed=1).pairs  # seeded: a rerun asks the same
    if len(s.pairs) > k:
        assert s.pairs != schedule(k, prompts, max_calls, per, seed=2).pairs


def test_too_few_calls_for_the_adjacent_pairs():
    with pytest.raises(UserError, match=r"needs 7 pairs x 5 prompts x 2 calls = 70"):
        schedule(8, 5, 69, 2)
    assert schedule(1, 5, 1, 2).pairs == []


class StubJudge:
    """Stands in for mbc_jax.judge.Judge: A wins every pair whose first answer is longer."""

    def __init__(self):
        self.asked = []

    def judge_pairs(self, pairs, *, orders=1, seed=0, max_calls=None, progress=True):
        self.asked += pairs
        self.orders = orders
        out = []
        for p in pairs:
            w = "A" if len(p.answer_a) > len(p.answer_b) else "B" if len(p.answer_a) < len(p.answer_b) else "tie"
            out.append({"outcome": w, "verdict_a_first": "A", "verdict_b_first": "B",
                        "judge_text_a_first": "x", "judge_text_b_first": "y"})
        return out


def test_games_skip_identical_answers_and_keep_their_order():
    steps = [10, 20, 30]
    texts = {10: ["aa", "same"], 20: ["a", "same"], 30: ["aaa", "other answer"]}
    answers = {s: {f"r{k}": {"index": k, "category": "c", "instruction": f"q{k}", "output_text": t}
                   for k, t in enumerate(texts[s])} for s in steps}
    judge = StubJudge()
    games = tournament.play(judge, steps, answers, [(0, 1), (1, 2)], ["r0", "r1"], progress=False)
    assert [(g["step_a"], g["step_b"], g["id"]) for g in games] == [
        (10, 20, "r0"), (10, 20, "r1"), (20, 30, "r0"), (20, 30, "r1")]
    assert [g["outcome"] for g in games] == ["A", "tie", "B", "B"]
    assert [g["identical"] for g in games] == [False, True, False, False]
    assert len(judge.asked) == 3 and judge.asked[0].instruction == "q0"
    assert (judge.asked[0].answer_a, judge.asked[0].answer_b) == ("aa", "a")
    assert tournament.SCORE == {"A": 1.0, "tie": 0.5, "B": 0.0}


def test_cli_defaults_match_the_library():
    assert (select_command.DEFAULT_DEV, select_command.DEFAULT_MAX_CALLS) == (DEFAULT_DEV, DEFAULT_MAX_CALLS) == (
        50, 2000)
    assert select_command.parse_steps("4, 8,12") == [4, 8, 12] and select_command.parse_steps(None) is None
    with pytest.raises(UserError, match="--steps"):
        select_command.parse_steps("4,x")
    assert np.isclose(tournament.CALLS_PER_JUDGMENT, 2)


def test_the_judge_is_asked_for_both_orders():
    judge = StubJudge()
    answers = {s: {"r0": {"index": 0, "category": "c", "instruction": "q", "output_text": "x" * s}} for s in (1, 2)}
    games = tournament.play(judge, [1, 2], answers, [(0, 1)], ["r0"], progress=False)
    assert judge.orders == 2 == tournament.CALLS_PER_JUDGMENT and games[0]["outcome"] == "B"
