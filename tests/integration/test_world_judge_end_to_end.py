"""The real `mbc-jax judge` client against the demo world's local judge (mbc_jax/judge/world_server.py),
offline, under both protocols (--orders 1 and 2): answer files of validation prompts where model A gives
the references and model B gets some wrong, some equally right; the rates are counted by hand."""

from __future__ import annotations

import json

import pytest

from mbc_jax import demo as D
from mbc_jax.commands import judge as judge_command
from mbc_jax.judge.world_server import WORLD_JUDGE_MODEL, world_judge

pytestmark = pytest.mark.usefixtures("_no_key")


def answer_files(tmp_path, suite):
    valid = D.generate_suite(80, 0, split="valid", exclude=suite)
    picked = [r for r in valid if r["familiarity"] != "open_ended"][:12]
    a, b, expected = [], [], {}
    for i, r in enumerate(picked):
        instruction = r["instruction"] + (f"\n\nContext:\n{r['context']}" if r["context"] else "")
        wrong = i % 3 != 2  # two of three: B answers nonsense; the third: B repeats the reference
        a.append({"id": r["id"], "instruction": instruction, "output_text": r["response"], "category": r["category"]})
        b.append({"id": r["id"], "instruction": instruction,
                  "output_text": "I am not sure about that." if wrong else r["response"], "category": r["category"]})
        expected[r["id"]] = "A" if wrong else "tie"
    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, rows in ((pa, a), (pb, b)):
        path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return pa, pb, expected


@pytest.mark.parametrize("orders", [1, 2])
def test_judge_cli_against_the_world_judge(tmp_path, suite, orders):
    a, b, expected = answer_files(tmp_path, suite)
    out = tmp_path / "results.json"
    with world_judge(seed=0) as url:
        rc = judge_command.main(["--a", str(a), "--b", str(b), "--out", str(out), "--base-url", url,
                                 "--model", WORLD_JUDGE_MODEL, "--orders", str(orders), "--no-progress",
                                 "--bootstrap", "100", "--cache", str(tmp_path / "cache")])
    assert rc == 0
    res = json.loads(out.read_text())
    head = res["single_order"] if orders == 1 else res["consistent"]
    o = head["overall"]
    wins = sum(v == "A" for v in expected.values())
    assert (o["n"], o["win"], o["tie"], o["loss"]) == (12, wins, 12 - wins, 0)
    same = 12 - wins  # B repeats A: identical answers, ties without a judge call
    assert res["n_identical"] == o["identical"] == same and res["calls"]["api_calls"] == wins * orders
    if orders == 2:
        assert o["consistency"] == 1.0  # the world judge's verdict never depends on the order


def test_reproduce_demo_scale_judges_with_the_world_judge(tmp_path, suite, monkeypatch):
    """`reproduce --scale demo` (the tiny scale's other name) without an endpoint starts the world judge for the
    judge step (selection and the MBC-vs-baseline judgments: `judge_selected.judge_runs`, here replaced by the
    real client judging the last answers, as selection itself is tested in test_select.py), and stops it."""
    import argparse

    from experiments import judge_selected, reproduce
    from mbc_jax.judge import JudgeConfig, judge_files

    seen = {}

    def judge_runs(folders, last, lrs, out, *, url, judge_model, dev, max_calls, max_new_tokens, mesh, limit, log):
        seen.update(url=url, model=judge_model, dev=dev, max_new_tokens=max_new_tokens)
        path = out / "lr1e-3_last.json"
        judge_files(last[("mbc", 1e-3)], last[("uniform", 1e-3)], path, config=JudgeConfig(model=judge_model),
                    base_url=url, name_a="MBC", name_b="baseline", log=log)
        return [path], ["lr 1e-3"], []

    monkeypatch.setattr(judge_selected, "judge_runs", judge_runs)
    monkeypatch.delenv(reproduce.JUDGE_URL_ENV, raising=False)
    a, b, expected = answer_files(tmp_path, suite)
    args = argparse.Namespace(scale="demo", data=None, judge_base_url=None, judge_model="gpt-4", judge_limit=None)
    runs = {("mbc", 1e-3): None, ("uniform", 1e-3): None}
    results, labels, note = reproduce.judge_all(runs, {"mbc_0.001": a, "uniform_0.001": b}, (1e-3,), args, tmp_path,
                                                reproduce.SCALES["tiny"])
    assert seen["model"] == WORLD_JUDGE_MODEL and seen["url"].startswith("http://127.0.0.1:")
    assert (seen["dev"], seen["max_new_tokens"]) == (16, reproduce.SCALES["tiny"].max_new_tokens)
    assert labels == ["lr 1e-3"] and WORLD_JUDGE_MODEL in note and "not an LLM" in note
    res = json.loads(results[0].read_text())
    assert res["judge"]["model"] == WORLD_JUDGE_MODEL and res["protocol"]["orders"] == 1
    o = res["single_order"]["overall"]
    assert (o["win"], o["loss"]) == (sum(v == "A" for v in expected.values()), 0)
    # with --data (real data) there is no world judge: the step is skipped as before
    skipped = reproduce.judge_all({}, {}, (1e-3,), argparse.Namespace(**{**vars(args), "data": "x.jsonl"}), tmp_path)
    assert skipped[0] == [] and "skipped" in skipped[2]
