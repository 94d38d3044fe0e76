"""The demo suite: eight task categories in fixed shares, drawn deterministically from one seed.

    records = generate_suite(600, seed=0)
    # [{"id", "instruction", "context", "response", "category", "familiarity"}]
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from mbc_jax import UserError
from mbc_jax.demo.familiarity import Knowledge, label
from mbc_jax.demo.tasks import GENERATORS, Task
from mbc_jax.demo.world import STREAM_PREFIX, make_world

DEFAULT_NUM_RECORDS = 600
DEFAULT_NUM_VALID = 80


class DemoError(UserError, ValueError):
    """A size or split the demo suite cannot provide (a one-line message naming what to change)."""


@dataclass(frozen=True)
class Category:
    name: str
    weight: int  # share of the suite = weight / sum of weights (sixtieths: 600 records -> 10 x weight)
    difficulty: str  # expected difficulty to memorize the response: easy / medium / hard
    about: str


CATEGORIES: tuple[Category, ...] = (
    Category("open_qa", 12, "easy", "one fact about a made-up country, one short sentence"),
    Category("classification", 10, "easy", "sentiment, even/odd or animal/plant; a one-word label"),
    Category("closed_qa", 8, "easy", "a question answered by one sentence copied from a biography"),
    Category("rewriting", 7, "medium", "reverse, sort, number, capitalize or substitute words"),
    Category("information_extraction", 6, "medium", "list the cities, creatures or years in a diary"),
    Category("summarization", 5, "medium", "topic sentence or key facts of a town description"),
    Category("brainstorming", 6, "hard", "a list of randomly drawn names or ideas"),
    Category("creative_writing", 6, "hard", "a long story or poem from random templates"),
)
_CATEGORY_NAMES = tuple(c.name for c in CATEGORIES)
assert _CATEGORY_NAMES == tuple(GENERATORS)


def category_counts(num_records: int) -> dict[str, int]:
    """How many records of each category a suite of `num_records` holds (largest remainder)."""
    if num_records < len(CATEGORIES):
        raise DemoError(
            f"num_records={num_records}: the demo suite needs at least {len(CATEGORIES)} records "
            "(one per category); ask for more"
        )
    total = sum(c.weight for c in CATEGORIES)
    exact = [c.weight * num_records / total for c in CATEGORIES]
    counts = [max(1, math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(CATEGORIES)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    i = 0
    while sum(counts) < num_records:
        counts[by_remainder[i % len(counts)]] += 1
        i += 1
    while sum(counts) > num_records:  # only when the max(1, .) floor overshot on tiny suites
        j = max(range(len(counts)), key=lambda k: (counts[k], -k))
        counts[j] -= 1
    return dict(zip(_CATEGORY_NAMES, counts))


def generate_suite(num_records: int = DEFAULT_NUM_RECORDS, seed: int = 0, *, split: str = "train",
                   exclude: Iterable[dict] = ()) -> list[dict]:
    """A deterministic synthetic demonstration suite in the Dolly schema.

    Returns `num_records` dicts `{"id", "instruction", "context", "response", "category",
    "familiarity"}` (familiarity: what the pretrained demo base could know, `familiarity.LABELS`), split
    over `CATEGORIES` by their shares (`category_counts`) and shuffled. The same `(num_records,
    seed, split, exclude)` always gives the same list; each category draws from its own random
    stream, so its records do not depend on the other categories' counts. No two records share a
    prompt (instruction and context). `split="valid"` draws from fresh streams of the same world
    (the same facts) and skips every prompt of the records in `exclude` (pass the training suite).
    """
    if split not in ("train", "valid"):
        raise DemoError(f"split={split!r}: use 'train' or 'valid'")
    world = make_world(seed)
    knowledge = Knowledge.of_seed(seed)
    seen = {(r["instruction"], r["context"]) for r in exclude}
    records: list[dict] = []
    for name, count in category_counts(num_records).items():
        rng = random.Random(f"{STREAM_PREFIX}/{seed}/{split}/{name}")
        made = 0
        attempts = 0
        while made < count:
            attempts += 1
            if attempts > 50 * count + 1000:
                raise DemoError(
                    f"num_records={num_records}: could not draw {count} distinct '{name}' prompts from "
                    "the demo world; ask for fewer records or use real data"
                )
            task = Task(*GENERATORS[name](rng, world))
            if (task.instruction, task.context) in seen:
                continue
            seen.add((task.instruction, task.context))
            records.append({"instruction": task.instruction, "context": task.context, "response": task.response,
                            "category": name, "familiarity": label(name, task.fact, knowledge)})
            made += 1
    random.Random(f"{STREAM_PREFIX}/{seed}/{split}/order").shuffle(records)
    return [{"id": f"{split}-{i:05d}", **r} for i, r in enumerate(records)]
