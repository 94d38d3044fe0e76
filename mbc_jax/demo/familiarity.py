"""Familiarity: how much of a demonstration the pretrained demo base could already know (ground truth).

Every record of the demo suite carries one of `LABELS` in its `familiarity` field:

- `corpus_fact`: the answer is a world fact the pretraining corpus states (a country's capital,
  language, ... or whether a creature / plant is an animal or a plant), so the base saw it;
- `unseen_fact`: the answer is a world fact the corpus never mentions: nothing but the
  demonstrations themselves can teach it;
- `context_given`: everything the answer needs is in the prompt: the record's context (a review,
  a biography, a diary, a town description, words to rewrite) or the instruction itself (the
  parity of a number it names); the answer is determined by the prompt and a task rule;
- `open_ended`: many answers are valid (stories, poems, lists of ideas); the response and a
  validation reference are one answer among several.

`label` computes it from a record's category and the world fact its answer rests on
(`tasks.Task.fact`); `labels_of` reads the labels back from a materialized demo folder (or a run
folder's data/), keyed by record id, which is how a later analysis joins them to records.csv.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mbc_jax.demo.corpus import coverage, kinds_stated

LABELS = ("corpus_fact", "unseen_fact", "context_given", "open_ended")
# the label of a category whose records rest on no world fact
BY_CATEGORY = {
    "classification": "context_given",  # sentiment of a review in the context; parity of the number asked about
    "closed_qa": "context_given",
    "rewriting": "context_given",
    "information_extraction": "context_given",
    "summarization": "context_given",
    "brainstorming": "open_ended",
    "creative_writing": "open_ended",
}


@dataclass(frozen=True)
class Knowledge:
    """What the pretraining corpus of one world states."""

    facts: frozenset[tuple[str, str]]  # (country, attribute)
    kinds: frozenset[str]  # creatures and plants whose kind is stated

    @classmethod
    def of_seed(cls, seed: int) -> Knowledge:
        return cls(coverage(seed), kinds_stated(seed))

    def knows(self, fact: tuple[str, ...]) -> bool:
        if fact[0] == "country":
            return (fact[1], fact[2]) in self.facts
        if fact[0] == "kind":
            return fact[1] in self.kinds
        raise ValueError(f"unknown fact {fact!r}")


def label(category: str, fact: tuple[str, ...] | None, knowledge: Knowledge) -> str:
    """The familiarity of a record of `category` whose answer rests on world `fact` (None: on none)."""
    if fact is not None:
        return "corpus_fact" if knowledge.knows(fact) else "unseen_fact"
    if category not in BY_CATEGORY:
        raise ValueError(f"a {category!r} record needs the world fact its answer rests on")
    return BY_CATEGORY[category]


def labels_of(folder: str | Path) -> dict[str, str]:
    """{record id: familiarity} of the demo files in `folder` (data.jsonl and valid.jsonl)."""
    out: dict[str, str] = {}
    for name in ("data.jsonl", "valid.jsonl"):
        path = Path(folder) / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    out[r["id"]] = r["familiarity"]
    return out
