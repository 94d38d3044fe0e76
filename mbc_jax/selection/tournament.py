"""Games between checkpoints, judged on the dev prompts: the one place selection talks to the judge.

A game is one (checkpoint pair, dev prompt). It is judged with `mbc_jax.judge`'s client exactly as
`mbc-jax judge` judges two answer files: the Figure 4 prompt, both presentation orders, and a win
only when both orders pick the same answer (anything else is a tie), every reply cached on disk
(a rerun pays nothing). Two identical answers are a tie without a call (`identical`). A game whose
judgments stayed invalid after the client's retries has outcome None: it is left out of the fit,
counted, and asked again by the next run.
"""

from __future__ import annotations

from collections.abc import Sequence

from mbc_jax import UserError
from mbc_jax.judge.answers import Pair
from mbc_jax.judge.client import (
    Judge,
    JudgeUnavailable,
    public_url,
)
from mbc_jax.judge.protocol import ORDERS

CALLS_PER_JUDGMENT = len(ORDERS)  # selection judges both presentation orders
PROTOCOL = ("both orders, as `mbc-jax judge`: a checkpoint wins a game only when both orders pick its answer, "
            "anything else is a tie; identical answers are a tie without a call")
SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}  # the score of the pair's first checkpoint (ties count half a win)


def describe(judge: Judge) -> dict:
    """The judge settings selection.json records."""
    return {"model": judge.config.model, "base_url": public_url(judge.endpoint), "params": judge.config.params(),
            "template": judge.template.path, "template_sha256": judge.template.sha256, "protocol": PROTOCOL}


def play(judge: Judge | None, steps: Sequence[int], answers: dict[int, dict[str, dict]],
         pairs: Sequence[tuple[int, int]], ids: Sequence[str], *, progress: bool = True) -> list[dict]:
    """One game per (pair of checkpoint indices, dev id), in that order: step_a, step_b, id, index,
    category, outcome ('A' = step_a's answer won, 'B', 'tie', or None if invalid), identical, and
    per order the judge's verdict and text."""
    games, to_judge, slots = [], [], []
    for i, j in pairs:
        sa, sb = steps[i], steps[j]
        for id_ in ids:
            a, b = answers[sa][id_], answers[sb][id_]
            game = {"step_a": sa, "step_b": sb, "id": id_, "index": a.get("index"), "category": a.get("category"),
                    "identical": a["output_text"] == b["output_text"]}
            if game["identical"]:
                game["outcome"] = "tie"
            else:
                slots.append(len(games))
                to_judge.append(Pair(f"{id_}|step{sa}|step{sb}", id_, a.get("index"), str(a.get("category")),
                                     a["instruction"], a["output_text"], b["output_text"], f"step {sa}", f"step {sb}"))
            games.append(game)
    if to_judge:
        if judge is None:
            raise ValueError("games to judge but no judge")
        try:
            judged = _judge_pairs(judge, to_judge, progress)
        except JudgeUnavailable as e:
            raise UserError(f"judge endpoint {public_url(judge.endpoint)} unreachable or failing after retries ({e}); "
                            f"{len(judge.cache)} judgment(s) are cached in {judge.cache.dir}: rerun the same command "
                            "to resume") from None
        for slot, j in zip(slots, judged):
            games[slot]["outcome"] = j["outcome"]
            for order in ORDERS:
                games[slot][f"verdict_{order}"] = j.get(f"verdict_{order}")
                games[slot][f"judge_text_{order}"] = j.get(f"judge_text_{order}")
    return games


def _judge_pairs(judge: Judge, pairs: Sequence[Pair], progress: bool) -> list[dict]:
    """The one call into the judge client: both orders, each judgment's `outcome` by the consistency rule."""
    return judge.judge_pairs(pairs, orders=len(ORDERS), progress=progress)
