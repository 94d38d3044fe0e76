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


def _ranking(strength, lo, hi):
    from mbc_jax.judge.bradley_terry import Ranking

    z = np.zeros(len(strength))
    return Ranking(np.array(strength, float), np.array(lo, float), np.array(hi, float), z, z, z, z, 10, 0.01)


def _games(outcomes):
    return [{"outcome": o, "identical": o == "tie"} for o in outcomes]


def test_no_winner_when_every_game_ties_or_the_cis_overlap():
    from mbc_jax.selection.select import decide

    steps = [4, 8, 12]
    flat = _ranking([0, 0, 0], [0, 0, 0], [0, 0, 0])
    step, reason = decide(steps, flat, _games(["tie"] * 6))
    assert step is None and reason.startswith("no winner: all 6 games were ties (6 of them between identical")
    step, reason = decide(steps, flat, _games([None, None]))
    assert step is None and "none of the 2 games got a valid verdict" in reason
    # step 8 is strongest, but its CI [-0.1, 0.9] overlaps both others' ([-0.5, 0.0] reaches -0.1 -> overlap)
    wide = _ranking([-0.3, 0.4, -0.1], [-0.5, -0.1, -0.4], [0.0, 0.9, 0.3])
    step, reason = decide(steps, wide, _games(["A", "B", "tie"]))
    assert step is None and "step 8, 95% CI [-0.10, 0.90]" in reason and "overlaps" in reason
    # lift its lower bound above step 4's upper bound: chosen, and the reason names the checkpoint it beats
    sep = _ranking([-0.3, 0.4, -0.1], [-0.5, 0.05, -0.4], [0.0, 0.9, 0.3])
    assert decide(steps, sep, _games(["A", "B", "tie"])) == (8, "step 8: the highest Bradley-Terry strength; its "
                                                             "95% CI lies above that of step(s) 4")
    assert decide([4], flat, []) == (4, "the only checkpoint")


def test_p_top_shares_a_tie_at_the_top():
    from mbc_jax.judge import bradley_terry as bt

    # every game a tie: every bootstrap fit is flat, so the top is shared by all three, not given to the first
    t = bt.tables(3, 2, [0, 1, 0, 1], [1, 2, 2, 2], [0.5] * 4, [0, 0, 1, 1])
    r = bt.rank(t, n_boot=20)
    np.testing.assert_allclose(r.p_top, [1 / 3] * 3)


def test_select_defaults_new_tokens_to_the_room_of_the_model(tmp_path):
    import json

    from mbc_jax.selection.select import SelectConfig, sampling_for

    class Run:
        path = tmp_path

    (tmp_path / "model").mkdir()
    cfg = {"model_type": "gpt_neo", "vocab_size": 50, "hidden_size": 8, "num_layers": 1, "num_heads": 2,
           "max_position_embeddings": 256, "attention_types": [[["global"], 1]], "window_size": 256}
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    logged = []
    assert sampling_for(Run(), SelectConfig(), logged.append).max_new_tokens == 128
    assert logged == ["select: --max-new-tokens: the model has 256 positions, so the default 256 is capped at 128 "
                      "(half of them; the prompt keeps the rest); pass --max-new-tokens to choose"]
    assert sampling_for(Run(), SelectConfig(max_new_tokens=250), logged.append).max_new_tokens == 250
    cfg["max_position_embeddings"] = 2048
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    assert sampling_for(Run(), SelectConfig(), logged.append).max_new_tokens == 256 and len(logged) == 1


def test_reproduce_falls_back_to_the_last_checkpoint_labelled():
    from experiments.judge_selected import selected_step, step_label

    none = {"chosen_step": None, "last_step": 12}
    assert selected_step(none) == 12 and step_label(none) == "step 12 (last checkpoint: selection found no winner)"
    some = {"chosen_step": 8, "last_step": 12}
    assert selected_step(some) == 8 and step_label(some) == "step 8"
