"""`mbc-jax select` end to end on a tiny trained run, judged by the local fake judge HTTP server of
test_judge_end_to_end.py (here its verdict prefers the longer response, so every outcome is known from
the answer files): the dev sample, the games, the Bradley-Terry ranking against an independent scipy
fit, the bound on judge calls, and a rerun that costs no call."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.optimize import minimize
from test_judge_end_to_end import FakeJudgeServer

from conftest import REPO
from mbc_jax import cli
from mbc_jax.run_folder import RunFolder
from mbc_jax.selection import dev_set

pytestmark = pytest.mark.usefixtures("_no_key")

START_A, END_A = "[The Start of Assistant A's Response]\n", "\n[The End of Assistant A's Response]"
START_B, END_B = "[The Start of Assistant B's Response]\n", "\n[The End of Assistant B's Response]"


def between(text, start, end):
    return text.split(start, 1)[1].split(end, 1)[0]


class LongerWins:
    """The server's verdict script: the longer response wins, equal lengths tie."""

    @staticmethod
    def get(key, default):
        (first, second), _ = key
        return "A" if len(first) > len(second) else "B" if len(first) < len(second) else "C"


class SelectionJudge(FakeJudgeServer):
    @staticmethod
    def identify(messages):
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[0]["content"].startswith("Please act as an impartial judge")
        text = messages[1]["content"]
        assert text.startswith("[User Instruction]\n") and "Human:" not in text
        return (between(text, START_A, END_A), between(text, START_B, END_B)), "order"


@pytest.fixture
def server():
    s = SelectionJudge()
    s.script = LongerWins()
    yield s
    s.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from mbc_jax import config as config_lib
    from mbc_jax.assemble import create_trainer

    out = tmp_path_factory.mktemp("select") / "run"
    cfg = config_lib.load(None, [f"out={out}", "model=demo", "init=random", "data=demo", "demo_records=48", "epochs=2",
                                 "batch_size=8", "checkpoint_every=4", "log_every=4", "learning_rate=3e-3",
                                 "max_length=256", "keep_checkpoints=100", "mesh=1,1,1"])
    create_trainer(cfg, log=lambda m: None).train()
    return out


def select(run_dir, server, *extra):
    return cli.main(["select", "--run", str(run_dir), "--dev", "4", "--max-new-tokens", "8", "--bootstrap", "200",
                     "--base-url", server.url, "--model", "judge-test", "--no-progress", "--concurrency", "4", *extra])


def expected_outcome(a: str, b: str) -> str:
    return "A" if len(a) > len(b) else "B" if len(a) < len(b) else "tie"


def bt_by_scipy(steps, games, ridge=0.01):
    pos = {s: k for k, s in enumerate(steps)}
    score = {"A": 1.0, "tie": 0.5, "B": 0.0}

    def nll(theta):
        total = 0.0
        for g in games:
            d = theta[pos[g["step_a"]]] - theta[pos[g["step_b"]]]
            x = score[g["outcome"]]
            total += x * -np.logaddexp(0, -d) + (1 - x) * -np.logaddexp(0, d)
        return -(total - 0.5 * ridge * np.sum(theta ** 2))

    return minimize(nll, np.zeros(len(steps)), method="BFGS", options={"gtol": 1e-10}).x


@pytest.mark.slow
def test_select_end_to_end(run_dir, server, capsys):
    assert select(run_dir, server) == 0
    printed = capsys.readouterr().out
    out = run_dir / "selection"
    res = json.loads((out / "selection.json").read_text())
    steps = [4, 8, 12]  # every checkpoint after step 0
    assert res["steps"] == steps and res["last_step"] == 12

    # the dev prompts: a seeded sample of 4 of the run's 80 validation records, in records.csv order
    run = RunFolder.open(run_dir)
    val_ids = [str(i) for i in run.records["id"][run.records["split"] == "val"]]
    pick = sorted(np.random.default_rng(0).choice(len(val_ids), 4, replace=False))
    assert res["dev"]["ids"] == [val_ids[i] for i in pick]
    assert res["dev"]["source"] == "validation split" and "validation" in printed

    # answers: one file per checkpoint, the dev ids, at most 8 new tokens
    answers = {}
    for s in steps:
        rows = [json.loads(line) for line in (out / "answers" / f"step_{s}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == res["dev"]["ids"] and all(r["num_tokens"] <= 8 for r in rows)
        answers[s] = {r["id"]: r["output_text"] for r in rows}

    # round robin (3 pairs x 4 prompts x 2 orders = 24 calls <= 2000); every outcome as the script says
    assert res["schedule"]["scheme"] == "round robin" and res["schedule"]["calls"] == 24
    games = [json.loads(line) for line in (out / "games.jsonl").read_text().splitlines()]
    assert len(games) == 12
    for g in games:
        a, b = answers[g["step_a"]][g["id"]], answers[g["step_b"]][g["id"]]
        assert g["outcome"] == expected_outcome(a, b) and g["identical"] == (a == b)
    judged = [g for g in games if not g["identical"]]
    # one call per distinct prompt (two games with the same two answers to one prompt share it), each asked once
    prompts = {(g["id"], *texts) for g in judged
               for texts in ((answers[g["step_a"]][g["id"]], answers[g["step_b"]][g["id"]]),
                             (answers[g["step_b"]][g["id"]], answers[g["step_a"]][g["id"]]))}
    assert res["calls"]["api_calls"] == len(prompts) == len(server.requests) and set(server.requests.values()) == {1}

    # the ranking against an independent fit of the same games, and the counts
    rows = {int(r["step"]): r for r in csv.DictReader((out / "ranking.csv").open())}
    ref = bt_by_scipy(steps, games)
    np.testing.assert_allclose([float(rows[s]["strength"]) for s in steps], ref, atol=1e-4)
    for s in steps:
        mine = [g for g in games if s in (g["step_a"], g["step_b"])]
        won = sum(g["outcome"] == ("A" if g["step_a"] == s else "B") for g in mine)
        tied = sum(g["outcome"] == "tie" for g in mine)
        lost = len(mine) - won - tied
        assert (int(rows[s]["wins"]), int(rows[s]["ties"]), int(rows[s]["losses"])) == (won, tied, lost)
        assert float(rows[s]["ci_low"]) <= float(rows[s]["ci_high"])
    assert res["chosen_step"] == steps[int(np.argmax(ref))]
    assert [r["chosen"] for r in res["ranking"]] == [s == res["chosen_step"] for s in steps]
    assert f"chosen step: {res['chosen_step']}" in printed

    # a rerun asks nothing new and writes the same ranking
    before = sum(server.requests.values())
    assert select(run_dir, server) == 0
    assert sum(server.requests.values()) == before
    again = json.loads((out / "selection.json").read_text())
    assert again["calls"]["api_calls"] == 0 and again["calls"]["cached"] == len(prompts)
    assert again["ranking"] == res["ranking"]

    # the bound: 16 calls allow only the 2 adjacent pairs; 15 allow nothing (an error naming the need)
    before = sum(server.requests.values())
    assert select(run_dir, server, "--max-calls", "16", "--out", str(run_dir / "sel16")) == 0
    bounded = json.loads((run_dir / "sel16" / "selection.json").read_text())
    assert bounded["schedule"]["pairs"] == [[4, 8], [8, 12]] and bounded["schedule"]["calls"] == 16
    assert sum(server.requests.values()) - before <= 16  # its own cache, so every judgment is asked anew
    assert select(run_dir, server, "--max-calls", "15", "--out", str(run_dir / "sel15")) == 2
    assert "needs 2 pairs x 4 prompts x 2 calls = 16" in capsys.readouterr().err


def test_dev_data_overlap_is_counted(run_dir):
    run = RunFolder.open(run_dir)
    dev = dev_set(run, 5, seed=1, dev_data=str(run_dir / "data" / "data.jsonl"))
    assert dev.source == "file" and dev.overlap == {"train": 5, "val": 0} and "train 5" in dev.description
    from mbc_jax import UserError

    with pytest.raises(UserError, match="has only 80 records"):
        dev_set(run, 81)
    assert REPO.is_dir()


@pytest.mark.slow
def test_reproduce_judges_selected_and_last_without_the_dev_prompts(run_dir, server, tmp_path):
    from experiments.judge_selected import judge_runs
    from mbc_jax.generate import SamplingConfig
    from mbc_jax.selection import answers_at_step

    run = RunFolder.open(run_dir)
    val = run.load_records("val")
    dev_ids = set(dev_set(run, 4).ids)
    judged = val[18:24]  # stands in for Table 1's last-checkpoint generations; holds dev prompt 21
    last = tmp_path / "last.jsonl"
    answers_at_step(run, 12, judged, last, sampling=SamplingConfig(max_new_tokens=8), seed=0)
    # the same run stands in for MBC and the baseline: each selection is computed once, then cached
    folders = {("mbc", 1e-3): run, ("uniform", 1e-3): run}
    results, labels, notes = judge_runs(folders, {k: last for k in folders}, (1e-3,), tmp_path / "judge",
                                        url=server.url, judge_model="judge-test", dev=4, max_calls=2000,
                                        max_new_tokens=8, log=lambda m: None)
    chosen = json.loads((run_dir / "selection" / "selection.json").read_text())["chosen_step"]
    assert [p.name for p in results] == ["lr1e-3_selected.json", "lr1e-3_last.json"]
    assert labels == [f"lr 1e-3, selected (MBC step {chosen}, baseline step {chosen})", "lr 1e-3, last checkpoint"]
    keep = [str(r.id) for r in judged if str(r.id) not in dev_ids]
    assert len(keep) == 5
    for path in results:
        res = json.loads(path.read_text())
        assert res["n_pairs"] == len(keep)
    sel = [json.loads(line) for line in (tmp_path / "judge" / "answers" / f"{run.slug}_step{chosen}.jsonl")
           .read_text().splitlines()]
    assert [r["id"] for r in sel] == keep
    assert any(f"{6 - len(keep)} dev prompt(s) left out" in n for n in notes)
    assert any(f"chose step {chosen}" in n for n in notes)


class AlwaysTie:
    @staticmethod
    def get(key, default):
        return "C"


@pytest.mark.slow
def test_no_winner_when_every_game_ties_and_cut_prompts_are_counted(run_dir, server, capsys, tmp_path):
    server.script = AlwaysTie()
    out = tmp_path / "sel"
    # the demo model has 256 positions: 250 new tokens leave 6 for each prompt, so every dev prompt is cut
    assert select(run_dir, server, "--steps", "4,8", "--max-new-tokens", "250", "--out", str(out)) == 0
    captured = capsys.readouterr()
    res = json.loads((out / "selection.json").read_text())
    assert res["chosen_step"] is None and res["winner"] is False and res["last_step"] == 8
    assert res["prompts_truncated"] == {"4": 4, "8": 4}
    assert "select: warning: 4 of 4 dev prompt(s) were cut to fit the model's positions" in captured.err
    assert res["games"]["ties"] == res["games"]["total"] == 4
    assert res["reason"].startswith("no winner: all 4 games were ties")
    assert not any(r["chosen"] for r in res["ranking"])
    np.testing.assert_allclose([r["p_top"] for r in res["ranking"]], [0.5, 0.5])  # not 1.00 for the first
    assert "dev prompts cut to fit the model: 4 of 4" in captured.out
    assert "no winner: all 4 games were ties" in captured.out and "no step chosen (last: 8)" in captured.out
    assert "chosen step" not in captured.out


def test_select_checks_its_output_folder_before_any_work(run_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["select", "--run", str(run_dir), "--out", str(blocker / "sel"),
                     "--base-url", "http://127.0.0.1:9/v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"error: --out {blocker / 'sel' / 'selection.json'}: {blocker} is a file, not a folder"]
    assert cli.main(["select", "--run", str(run_dir), "--out", str(blocker),
                     "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
