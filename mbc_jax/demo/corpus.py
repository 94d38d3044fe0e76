"""The demo world's encyclopedia: plain prose that the tiny base model is pretrained on.

    docs = build_corpus(seed)        # [{"id": "corpus-00000", "text": "Drolaria is a country ..."}]
    facts = coverage(seed)           # the (country, attribute) facts the corpus states
    kinds = kinds_stated(seed)       # the creatures and plants whose kind (animal / plant) it states

The corpus states only a chosen part of the world (each country gets 3 or 4 of its 7 facts,
alternately, in an order drawn from the seed), so that some facts the demonstrations ask about are
known to the pretrained base and the others were never mentioned (`familiarity.label`). Each
stated fact appears in every one of a country's `ARTICLES_PER_COUNTRY` articles, each time in one
of several phrasings (one of them the demonstration's own wording) and in a shuffled order, with
filler sentences that state nothing about the world. Half of the creatures and half of the plants
get an article of their own, every town a short sketch, and lists of the country and town names
(numbered or dashed, one per line) give the base the list format without stating a fact. All draws
come from random streams named after the seed, separate from the suite's streams, so adding the
corpus changed no record.
"""

from __future__ import annotations

import random

from mbc_jax.demo.words import ADJECTIVES, ATTRIBUTES, GOODS, JOBS, NOUNS, PLACES, SHOPS, WINTERS
from mbc_jax.demo.world import LEX, STREAM_PREFIX, World, make_world

ARTICLES_PER_COUNTRY = 3
ANIMAL_PLANT_ARTICLES = 2  # articles per described creature or plant
LIST_LENGTH = 10  # names per list document
FOODS = ("seeds", "berries", "grass", "insects", "fish", "nuts")
EOS_TEXT = "<|endoftext|>"  # ends every document, as in GPT-style pretraining (the tokenizer's id 0)

# Phrasings per attribute; the first is the demonstration's own answer sentence (tasks._gen_open_qa).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {c} is {v}.", "{v} is the capital city of {c}.",
                "The government of {c} sits in {v}, its capital."),
    "language": ("People in {c} speak {v}.", "The language of {c} is {v}.",
                 "Most people in {c} grow up speaking {v}."),
    "currency": ("The currency of {c} is the {v}.", "In {c} people pay with the {v}.",
                 "The money of {c} is called the {v}."),
    "animal": ("The national animal of {c} is the {v}.", "The {v} is the symbol of {c}.",
               "In {c} the {v} is honored as the national animal."),
    "plant": ("The national plant of {c} is the {v}.", "The {v} is the plant that stands for {c}.",
              "In {c} the {v} is honored as the national plant."),
    "founded": ("{c} was founded in {v}.", "The country of {c} dates from the year {v}.",
                "{c} was founded in the year {v}."),
    "export": ("The main export of {c} is {v}.", "{c} sells more {v} to other countries than anything else.",
               "Traders know {c} above all for its {v}."),
}
FILLERS = ("{c} is a country of {a} {n}s and {a2} {n2}s.", "Travelers to {c} often remember its {a} {n}s.",
           "The winters in {c} are {w}, and the summers are {a}.", "Many {j}s live in {c}.",
           "Every town in {c} has {art} {a} {shop}.")


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def coverage(seed: int) -> frozenset[tuple[str, str]]:
    """The (country, attribute) facts of world `seed` that the corpus states: 3 or 4 of 7 per country."""
    rng = random.Random(f"{STREAM_PREFIX}/{seed}/corpus/coverage")
    facts = set()
    for i, country in enumerate(LEX.countries):
        attributes = list(ATTRIBUTES)
        rng.shuffle(attributes)
        facts.update((country, a) for a in attributes[: 3 + i % 2])
    return frozenset(facts)


def described(seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(creatures, plants) that get an article of their own: half of each, drawn from the seed."""
    rng = random.Random(f"{STREAM_PREFIX}/{seed}/corpus/described")
    creatures = tuple(sorted(rng.sample(LEX.creatures, len(LEX.creatures) // 2)))
    plants = tuple(sorted(rng.sample(LEX.plants, len(LEX.plants) // 2)))
    return creatures, plants


def kinds_stated(seed: int) -> frozenset[str]:
    """Creatures and plants whose kind the corpus states: their own article says "is an animal" /
    "is a plant", or a stated national animal / plant fact names them."""
    world = make_world(seed)
    creatures, plants = described(seed)
    national = {world.facts[f] for f in coverage(seed) if f[1] in ("animal", "plant")}
    return frozenset(creatures) | frozenset(plants) | frozenset(national)


def _filler(rng: random.Random, country: str) -> str:
    a, a2 = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES)
    return rng.choice(FILLERS).format(c=country, a=a, a2=a2, n=rng.choice(NOUNS), n2=rng.choice(NOUNS),
                                      w=rng.choice(WINTERS), j=rng.choice(JOBS), art=_article(a),
                                      shop=rng.choice(SHOPS))


def _country_article(rng: random.Random, world: World, country: str, attributes: list[str]) -> str:
    sentences = [rng.choice(PHRASINGS[a]).format(c=country, v=world.facts[(country, a)]) for a in attributes]
    sentences += [_filler(rng, country) for _ in range(2)]
    rng.shuffle(sentences)
    cut = len(sentences) // 2  # two paragraphs
    return (f"{country} is a country. " + " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])).strip()


def _name_lists(rng: random.Random) -> list[str]:
    """Lists of place names, one item a line (numbered or dashed): format, not facts."""
    docs = []
    for title, names in (("Countries of the world", LEX.countries), ("Towns of the world", LEX.cities)):
        names = list(names)
        rng.shuffle(names)
        for i in range(0, len(names), LIST_LENGTH):
            chunk = names[i : i + LIST_LENGTH]
            numbered = rng.random() < 0.5
            lines = [f"{k}. {n}" if numbered else f"- {n}" for k, n in enumerate(chunk, 1)]
            docs.append(f"{title}, part {i // LIST_LENGTH + 1}:\n" + "\n".join(lines))
    return docs


def _living_article(rng: random.Random, name: str, kind: str) -> str:
    a, a2 = rng.choice(ADJECTIVES), rng.choice(ADJECTIVES)
    if kind == "animal":
        lines = [f"The {name} is {_article(a)} {a} animal.",
                 f"It lives near {rng.choice(PLACES)} and feeds on {rng.choice(FOODS)}.",
                 f"Most {name}s are {a2}, and a young {name} follows its mother for a year."]
    else:
        lines = [f"The {name} is {_article(a)} {a} plant.",
                 f"It grows along {rng.choice(PLACES)} and flowers in the {rng.choice(('spring', 'summer'))}.",
                 f"Its leaves are {a2}, and {rng.choice(JOBS)}s use it to make {rng.choice(GOODS)}."]
    return " ".join(lines)


def _town_sketch(rng: random.Random, town: str) -> str:
    a, good, job = rng.choice(ADJECTIVES), rng.choice(GOODS), rng.choice(JOBS)
    return (f"{town} is {_article(a)} {a} town. Its {job}s work with {good}, and its market sits near "
            f"{rng.choice(PLACES)}. Visitors say the {rng.choice(SHOPS)} is worth the trip, but the winters "
            f"are {rng.choice(WINTERS)}.")


def build_corpus(seed: int = 0) -> list[dict]:
    """The encyclopedia of world `seed`, in a shuffled order: text-schema records `{"id", "text"}`,
    each document ending in `EOS_TEXT`. The same seed always gives the same list."""
    world = make_world(seed)
    stated = coverage(seed)
    rng = random.Random(f"{STREAM_PREFIX}/{seed}/corpus/text")
    docs = []
    for country in LEX.countries:
        attributes = [a for a in ATTRIBUTES if (country, a) in stated]
        docs += [_country_article(rng, world, country, attributes) for _ in range(ARTICLES_PER_COUNTRY)]
    creatures, plants = described(seed)
    for names, kind in ((creatures, "animal"), (plants, "plant")):
        docs += [_living_article(rng, name, kind) for name in names for _ in range(ANIMAL_PLANT_ARTICLES)]
    docs += [_town_sketch(rng, town) for town in LEX.cities]
    docs += _name_lists(rng)
    rng.shuffle(docs)
    return [{"id": f"corpus-{i:05d}", "text": text + EOS_TEXT} for i, text in enumerate(docs)]
