"""`mbc-jax plan --health` (issue 29): MBC's step-0 sampling health from one scoring pass of the config's data.

The printed effective sample size equals `weight_health` on weights computed here by hand (each record's
perplexity from the model's logits, then p from the config's power and floor); a planted collapse (one
record whose response the model finds almost impossible) prints the trainer's warning line naming it; a
uniform sampler loads nothing and says the health does not apply.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import REPO, write_jsonl
from mbc_jax import config as config_lib
from mbc_jax.cli import main as cli
from mbc_jax.demo import materialize
from mbc_jax.models import export_model, init_model, load_tokenizer
from mbc_jax.run_folder import data_paths
from mbc_jax.run_setup import tokenize_run_data
from mbc_jax.samplers import weight_health
from mbc_jax.sharding import make_mesh
from mbc_jax.train import model_runtime

DEMO = str(REPO / "experiments" / "configs" / "demo.yaml")
SMALL = ["--mesh", "1,1,1", "max_length=128", "score_tokens_per_batch=2048"]


def hand_perplexity(model, records, response: bool) -> np.ndarray:
    """exp(mean NLL) of each record over its targets (the next token at every position; `response`: only
    those inside the response), from the model's full logits, one record per row."""
    length = max(len(r) for r in records)
    ids = np.zeros((len(records), length), np.int32)
    for row, r in enumerate(records):
        ids[row, :len(r)] = r.input_ids  # right padding: causal attention keeps it out of the real positions
    logp = np.asarray(jax.nn.log_softmax(np.asarray(model.apply(ids), np.float64), axis=-1))
    out = []
    for row, r in enumerate(records):
        n = len(r)
        nll = -logp[row, np.arange(n - 1), r.input_ids[1:]]
        keep = np.asarray(r.response_mask[1:]) if response else np.ones(n - 1, bool)
        out.append(np.exp(nll[keep].mean()))
    return np.asarray(out)


def hand_weights(ppl: np.ndarray, power: float, floor: float) -> np.ndarray:
    w = (ppl / ppl.max()) ** power  # scaled first: 2000 ** 40 is past float64
    return (1 - floor) * w / w.sum() + floor / len(ppl)


def run_plan(tmp_path, capsys, args: list[str]) -> tuple[str, dict]:
    numbers = tmp_path / "plan.json"
    assert cli(["plan", "--health", "--json", str(numbers), *args]) == 0
    return capsys.readouterr().out, json.loads(numbers.read_text())


def test_health_of_the_demo_config_equals_weight_health_of_hand_made_weights(tmp_path, capsys):
    overrides = ["model=demo", "init=random", "demo_records=60", "mbc.power=40", "mbc.floor=0.05"]
    out, plan = run_plan(tmp_path, capsys, ["--config", DEMO, *SMALL, *overrides])
    cfg = config_lib.load(DEMO, [*overrides, "max_length=128"])
    paths = materialize(tmp_path / "data", num_records=60, seed=0)  # what the plan's run folder held
    tokenizer = load_tokenizer(paths["model"])
    model = init_model(json.loads(paths["config"].read_text()), mesh=make_mesh("1,1,1", jax.devices()[:1]),
                       seed=cfg.seed, tokenizer=tokenizer, **model_runtime(cfg))
    train = tokenize_run_data(cfg, *data_paths(cfg, tmp_path), tokenizer, 2048, log=lambda m: None).train
    assert cfg.loss_on == "full" and cfg.mbc.metric == "loss"  # the demo weighs the full dialogue
    p = hand_weights(hand_perplexity(model, train, response=False), 40, 0.05)
    want = weight_health(p, np.zeros(len(p)))
    n, health = len(train), plan["health"]
    assert health["records"] == n == plan["data"]["train_records"] == 60
    assert health["perplexity_over"] == "full dialogue" and (health["power"], health["floor"]) == (40, 0.05)
    assert n - health["ess"] == pytest.approx(n - want["ess"], rel=1e-3)  # the shortfall from N, not just ~N
    assert health["max_weight"] == pytest.approx(want["max_weight"], rel=1e-3)
    assert health["top1pct_share"] == pytest.approx(want["top1pct_share"], rel=1e-3)
    assert [h["id"] for h in health["heaviest"]] == [train[i].id for i in want["heaviest"]]
    assert f"effective sample size {want['ess']:.1f} of 60 records ({want['ess'] / 60:.1%})" in out
    assert f"largest weight {want['max_weight']:.4f}" in out and health["warning"] is None
    assert "not concentrated (the trainer warns below 10% of N)" in out


def planted_model(tmp_path, tokens: list[int]):
    """The demo model made a fixed unigram model (final LayerNorm scale 0: every position's logits are its bias
    against the tied embeddings) under which `tokens` have logit -40 and every other token about 0."""
    paths = materialize(tmp_path / "demo", num_records=40, seed=0)
    model = init_model(json.loads(paths["config"].read_text()), mesh=make_mesh("1,1,1", jax.devices()[:1]),
                       tokenizer=load_tokenizer(paths["model"]))
    params = jax.tree_util.tree_map(np.array, model.params)
    params["ln_final"]["scale"][:] = 0
    params["ln_final"]["bias"][:] = 0
    params["ln_final"]["bias"][0] = -40.0
    params["embed_tokens"][:, 0] = 0
    params["embed_tokens"][tokens, 0] = 1.0
    return export_model(model, tmp_path / "planted", params=params)


def test_a_planted_surprising_record_prints_the_trainers_warning(tmp_path, capsys):
    rows = [json.loads(x) for x in (materialize(tmp_path / "demo", num_records=40, seed=0)["data"]).open()]
    planted = {"id": "planted", "instruction": "Say it.", "context": "", "response": "zqxv " * 12,
               "category": "open_qa"}
    tokenizer = load_tokenizer(tmp_path / "demo" / "model")
    tokens = sorted(set(tokenizer.encode(planted["response"])) - set(tokenizer.encode(" ".join(
        r["response"] for r in rows))))
    assert tokens  # pieces of the planted word no other response has
    folder = planted_model(tmp_path, tokens)  # an ordinary HF folder: config.json, model.safetensors, tokenizer
    data = write_jsonl(tmp_path / "records.jsonl", [*rows, planted])
    out, plan = run_plan(tmp_path, capsys, [*SMALL, f"model={folder}", f"data={data}", "loss_on=response",
                                            "val_fraction=0", "batch_size=4"])
    health = plan["health"]
    assert health["perplexity_over"] == "response" and health["records"] == 41
    assert health["heaviest"][0]["id"] == "planted" and health["ess"] < 1.01 and health["max_weight"] > 0.99
    warning = next(line.strip() for line in out.splitlines() if "warning: step 0" in line)
    assert warning == health["warning"]
    assert warning.startswith("warning: step 0: MBC's weights are concentrated: effective sample size 1.0 of 41 "
                              "records (2.4% < 10%); heaviest: planted (p 1.00, perplexity ")


def test_a_uniform_sampler_has_no_health_and_loads_no_weights(tmp_path, capfd):
    """16 devices, more than pytest's 8: the plan, and `--health` with it, runs again in a process of its own."""
    out, plan = run_plan(tmp_path, capfd, ["--config", DEMO, "--mesh=1,-1,1", "--devices", "16", *SMALL[2:],
                                           "sampler=uniform", "demo_records=60"])
    assert plan["devices"] == 16
    assert plan["health"] == {"applies": False, "sampler": "uniform"}
    assert "MBC health: does not apply (sampler: uniform draws every record equally)" in out
