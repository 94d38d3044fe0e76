"""The demo: a generated demonstration suite, its tokenizer and a tiny GPT-Neo config (`mbc-jax demo`).

This is what the README's one command trains on when no network, no GPU and no real checkpoint
are at hand. Nothing here is real human data and nothing is downloaded:

* `generate_suite` (suite.py, with tasks.py, world.py and words.py) writes instruction / context /
  response records in the databricks-dolly-15k schema from a made-up world (invented countries,
  cities, people, creatures and plants with randomly drawn facts) and a few hundred hand-written
  English words. Every record is produced by a template and `random.Random` streams derived from
  one integer seed, so the same seed always gives the same bytes. The records imitate the *shape*
  of human demonstrations (eight labelled task categories, from one-word classification labels to
  long free-form stories) so that memorization can be compared across categories of very
  different difficulty; they say nothing about how a model trained on real demonstrations behaves.
* Every record carries its `familiarity` (familiarity.py): whether its answer is a world fact the
  pretraining corpus states (`corpus_fact`), one it never mentions (`unseen_fact`), given by the
  prompt (`context_given`), or one of many valid answers (`open_ended`).
* `build_corpus` (corpus.py) writes the world's encyclopedia, plain prose stating a chosen half of
  the world's facts, and `demo_base` (base.py) pretrains the tiny GPT-Neo on it with our own
  `Trainer` (text schema, loss on every token), once per seed and code version, into the user's
  cache: `model: demo` fine-tunes that base (`init=random` gives the old random initialization).
* `build_tokenizer` (tokenizer.py) trains a small byte-level BPE tokenizer on the default-size
  suite, as the data pipeline's `Template` renders it, and on the corpus, at run time (GPT-2 style
  pre-tokenization, so every byte string round-trips, spaces and newlines included), with
  `<|endoftext|>` as bos / eos / unk as in GPT-Neo and a separate `<|pad|>`. It depends on the seed
  only, so suites of every size share the base's tokenizer.
* `model_config` (model.py) is the Hugging Face GPT-Neo `config.json` of about a million
  parameters, shipped as `tiny_gpt_neo.json`, with the trained tokenizer's vocabulary size.
* `materialize` writes the data to a folder: `data.jsonl`, `valid.jsonl`, `corpus.jsonl`,
  `tokenizer/` and a weightless checkpoint-style `model/` (config plus tokenizer), byte-identical on
  every call.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from mbc_jax.demo.corpus import build_corpus
from mbc_jax.demo.familiarity import LABELS as FAMILIARITY_LABELS
from mbc_jax.demo.model import model_config
from mbc_jax.demo.suite import (
    CATEGORIES,
    DEFAULT_NUM_RECORDS,
    DEFAULT_NUM_VALID,
    Category,
    DemoError,
    category_counts,
    generate_suite,
)
from mbc_jax.demo.tokenizer import EOS_TOKEN, PAD_TOKEN, TOKENIZER_VOCAB_SIZE, build_tokenizer
from mbc_jax.paths import UrlPath, as_path, atomic_write

__all__ = [
    "CATEGORIES",
    "DEFAULT_NUM_RECORDS",
    "DEFAULT_NUM_VALID",
    "DESCRIPTION",
    "EOS_TOKEN",
    "FAMILIARITY_LABELS",
    "PAD_TOKEN",
    "TOKENIZER_VOCAB_SIZE",
    "Category",
    "DemoError",
    "build_corpus",
    "build_tokenizer",
    "category_counts",
    "generate_suite",
    "materialize",
    "model_config",
]

DESCRIPTION = (
    "The demo run uses a synthetic, generated demonstration suite, not real human data: "
    "{n} instruction/context/response records in the databricks-dolly-15k schema, produced "
    "deterministically from one seed by templates over a made-up world (invented countries, cities, "
    "people, creatures and plants with randomly drawn facts) and a few hundred hand-written English "
    "words. Its eight labelled categories span very different difficulty to memorize, from one-word "
    "classification labels and one-fact answers to long randomized stories. A byte-level BPE "
    "tokenizer ({v} tokens) is trained on it at run time, and the model is a tiny GPT-Neo (4 layers, "
    "hidden size 128, about one million parameters) pretrained on a generated encyclopedia of the same "
    "world that states about half of its facts, so every record is labelled with what the base could "
    "know (a fact it saw, a fact it never saw, given in the prompt, open-ended). It exists so that the "
    "whole method runs end to end in minutes on a CPU without a network; its numbers say nothing "
    "about real models or real data."
).format(n=DEFAULT_NUM_RECORDS, v=TOKENIZER_VOCAB_SIZE)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _sync(src: Path, dst: Path | UrlPath) -> None:
    """Copy the files of `src` into `dst` (a local folder or a URL), touching only those whose bytes differ."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        target = dst / f.name
        if f.is_dir():
            _sync(f, target)
        elif not target.is_file() or target.read_bytes() != f.read_bytes():
            atomic_write(target, f.read_bytes())  # a reader never sees half a file


def materialize(out_dir: str | Path | UrlPath, num_records: int = DEFAULT_NUM_RECORDS, seed: int = 0,
                num_valid: int = DEFAULT_NUM_VALID) -> dict[str, Path | UrlPath]:
    """Write the demo to `out_dir` and return its paths.

    Layout: `data.jsonl` (training records), `valid.jsonl` (`num_valid` held-out records of the
    same world, no prompt shared with training; omitted when 0), `corpus.jsonl` (the world's
    pretraining text, text schema), `tokenizer/` (trained on the default-size suite of `seed` and
    the corpus, whatever `num_records` is) and `model/` (`config.json` plus the same tokenizer
    files: a Hugging Face checkpoint folder without weights, from which `init=random` starts, and
    the base is pretrained), and `manifest.json` (seed, sizes, category and familiarity counts).
    Calling it again with the same arguments leaves every file byte-identical (and unwritten).
    """
    out_dir = as_path(out_dir)
    train = generate_suite(num_records, seed)
    valid = generate_suite(num_valid, seed, split="valid", exclude=train) if num_valid else []
    corpus = build_corpus(seed)
    reference = train if num_records == DEFAULT_NUM_RECORDS else generate_suite(DEFAULT_NUM_RECORDS, seed)
    with tempfile.TemporaryDirectory(prefix="mbc-demo-") as tmp:
        stage = Path(tmp)
        _write_jsonl(stage / "data.jsonl", train)
        if valid:
            _write_jsonl(stage / "valid.jsonl", valid)
        _write_jsonl(stage / "corpus.jsonl", corpus)
        tokenizer = build_tokenizer(reference, stage / "tokenizer", corpus=corpus)
        model = stage / "model"
        model.mkdir()
        for f in sorted((stage / "tokenizer").iterdir()):
            shutil.copyfile(f, model / f.name)
        config = model_config(tokenizer)
        (model / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        manifest = {
            "what": "synthetic generated demonstration suite (mbc_jax.demo); not real human data",
            "seed": seed,
            "num_records": num_records,
            "num_valid": num_valid,
            "categories": category_counts(num_records),
            "familiarity": {label: sum(r["familiarity"] == label for r in train) for label in FAMILIARITY_LABELS},
            "corpus_documents": len(corpus),
            "vocab_size": len(tokenizer),
            "data_sha256": hashlib.sha256((stage / "data.jsonl").read_bytes()).hexdigest(),
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _sync(stage, out_dir)
    if not valid:
        (out_dir / "valid.jsonl").unlink(missing_ok=True)  # left by an earlier call with num_valid > 0
    paths = {
        "data": out_dir / "data.jsonl",
        "corpus": out_dir / "corpus.jsonl",
        "tokenizer": out_dir / "tokenizer",
        "model": out_dir / "model",
        "config": out_dir / "model" / "config.json",
        "manifest": out_dir / "manifest.json",
    }
    if valid:
        paths["valid"] = out_dir / "valid.jsonl"
    return paths
