"""The demo base's trade-off: pretraining steps -> wall time, pretraining loss, and what the base knows.

    python benchmarks/demo_base.py --steps 300 900        # one base per step count, in a temporary cache

For each step count it pretrains a base (`mbc_jax.demo.base.build_base`, the default recipe with
`steps` changed) and scores the default 600-record training suite with it (teacher forcing, the
demonstration template): response exact match (Eq. 1 over response tokens, pooled) per familiarity
label, and the mean per-record response exact match of the `open_qa` records by whether the
corpus states their fact; and, for all 420 country facts, the exact match of the value's tokens
after the corpus's own first phrasing as an article would open ("X is a country. The capital of X
is" -> " Y"), stated vs never stated. A base that learned its corpus knows the stated facts and
not the others. Prints one JSON line per step count. `--base FOLDER` measures an existing base
(e.g. the cached one) instead of building.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(steps: int, cache: Path, folder: Path | None = None) -> dict:
    from mbc_jax.data import Template, load_records, tokenize
    from mbc_jax.demo import base, materialize
    from mbc_jax.models import load_model
    from mbc_jax.scoring import Scorer

    spec = dataclasses.replace(base.PRETRAIN, steps=steps)
    t0 = time.perf_counter()
    cpu0 = os.times()
    if folder is None:
        folder = base.build_base(cache / f"base-{steps}", 0, spec, log=lambda m: None)
    cpu1 = os.times()
    wall = time.perf_counter() - t0
    info = json.loads((folder / "pretrain.json").read_text())
    extra: dict = {}
    data = materialize(cache / "data")
    model = load_model(str(folder))
    records, _ = load_records(str(data["data"]))
    examples, _ = tokenize(records, model.tokenizer, Template(), 256)
    scores = Scorer(model.module, model.mesh, seq_len=256)(model.params, examples)
    labels = {json.loads(x)["id"]: json.loads(x) for x in data["data"].read_text().splitlines()}
    fam = np.array([labels[e.id]["familiarity"] for e in examples])
    cat = np.array([labels[e.id]["category"] for e in examples])
    per_record = scores.exact_match(response=True)
    for what, response in (("full", False), ("response", True)):  # the base's perplexity on the demonstrations
        out_ppl = float(np.exp(scores.pooled("nll", response)))
        extra[f"suite_ppl_{what}"] = round(out_ppl, 2)
    out = {"steps": steps, "build_wall_s": round(wall, 1),
           "build_cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 1),
           "pretrain_wall_s": info["wall_seconds"], "epochs": round(info["epochs"], 2),
           "first_loss": round(info["first_loss"], 3), "final_loss": round(info["final_loss"], 3)}
    for label in sorted(set(fam)):
        m = fam == label
        out[f"response_em_{label}"] = round(float(scores.sums["response_match"][m].sum()
                                                  / scores.sums["response_tokens"][m].sum()), 3)
    for label in ("corpus_fact", "unseen_fact"):
        m = (cat == "open_qa") & (fam == label)
        out[f"open_qa_{label}_mean_em"] = round(float(np.nanmean(per_record[m])), 3)
    out.update(extra)
    out.update(fact_recall(model, seed=0))
    return out


def fact_recall(model, seed: int) -> dict:
    """Exact match of each fact's value tokens after its corpus phrasing, stated vs never stated."""
    from mbc_jax.data import load_records, tokenize
    from mbc_jax.demo.corpus import PHRASINGS, coverage
    from mbc_jax.demo.world import make_world
    from mbc_jax.scoring import Scorer

    world, stated = make_world(seed), coverage(seed)
    rows, keys = [], []
    for (country, attribute), value in sorted(world.facts.items()):
        sentence = PHRASINGS[attribute][0].format(c=country, v=value)
        prefix = f"{country} is a country. " + sentence[: sentence.rindex(value)].rstrip(" ")
        ids = model.tokenizer.encode(prefix, add_special_tokens=False)
        rest = model.tokenizer.encode(" " + value, add_special_tokens=False)
        rows.append({"id": f"{country}/{attribute}", "input_ids": ids + rest, "prompt_length": len(ids)})
        keys.append((country, attribute) in stated)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = load_records(f.name)
    os.unlink(f.name)
    examples, _ = tokenize(records, model.tokenizer, max_length=256)
    em = Scorer(model.module, model.mesh, seq_len=256)(model.params, examples).exact_match(response=True)
    keys = np.array(keys)
    return {"fact_value_em_stated": round(float(em[keys].mean()), 3),
            "fact_value_em_never_stated": round(float(em[~keys].mean()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[600])
    p.add_argument("--base", type=Path, default=None, help="measure this base folder instead of building one")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mbc-demo-base-") as tmp:
        if args.base:
            print(json.dumps(measure(json.loads((args.base / "pretrain.json").read_text())["spec"]["steps"],
                                     Path(tmp), args.base)), flush=True)
            return
        for steps in args.steps:
            print(json.dumps(measure(steps, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
