"""The demo's made-up world: invented names (fixed, the world's "language") and the facts a seed draws.

Which city is which country's capital, which language it speaks, ... is drawn from the suite's seed;
the invented words themselves do not depend on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mbc_jax.demo.words import CODAS, GOODS, ONSETS, VOWELS

# Every random stream of the suite is named "{STREAM_PREFIX}/{seed}/...". Frozen: the prefix is part
# of what the streams draw, so renaming it would change every generated record.
STREAM_PREFIX = "mbc-embedded"


def _made_up_words(rng: random.Random, count: int, syllables: tuple[int, ...], suffixes: tuple[str, ...],
                   taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        k = rng.choice(syllables)
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(k))
        w += rng.choice(suffixes) if suffixes else rng.choice(CODAS)
        if 3 <= len(w) <= 10 and w not in taken:
            taken.add(w)
            words.append(w)
    return words


@dataclass(frozen=True)
class Lexicon:
    """The invented names of the world, by kind."""

    countries: tuple[str, ...]
    cities: tuple[str, ...]
    given: tuple[str, ...]
    family: tuple[str, ...]
    languages: tuple[str, ...]
    currencies: tuple[str, ...]
    creatures: tuple[str, ...]
    plants: tuple[str, ...]


def _lexicon() -> Lexicon:
    rng = random.Random(20240611)  # fixed: the invented words do not depend on the suite's seed
    taken: set[str] = set()

    def names(count: int, syllables: tuple[int, ...], suffixes: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(w.capitalize() for w in _made_up_words(rng, count, syllables, suffixes, taken))

    def lower(count: int, syllables: tuple[int, ...], suffixes: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(_made_up_words(rng, count, syllables, suffixes, taken))

    return Lexicon(
        countries=names(60, (2, 3), ("ria", "ora", "and", "ene", "ar", "ia")),
        cities=names(90, (2, 2, 3)),
        given=names(50, (2,)),
        family=names(50, (2, 3)),
        languages=names(30, (2,), ("ic", "ese", "ish")),
        currencies=lower(30, (1, 2), ("l", "n", "ck")),
        creatures=lower(45, (1, 2)),
        plants=lower(45, (2,), ("wort", "leaf", "root", "moss", "")),
    )


LEX = _lexicon()


@dataclass(frozen=True)
class World:
    """Which facts hold in one suite's world (drawn from its seed)."""

    facts: dict[tuple[str, str], str]  # (country, attribute) -> value


def make_world(seed: int) -> World:
    """The facts of the world of suite `seed`: each country's capital, language, currency, ..."""
    rng = random.Random(f"{STREAM_PREFIX}/{seed}/world")
    facts: dict[tuple[str, str], str] = {}
    capitals = rng.sample(LEX.cities, len(LEX.countries))
    for country, capital in zip(LEX.countries, capitals):
        facts[(country, "capital")] = capital
        facts[(country, "language")] = rng.choice(LEX.languages)
        facts[(country, "currency")] = rng.choice(LEX.currencies)
        facts[(country, "animal")] = rng.choice(LEX.creatures)
        facts[(country, "plant")] = rng.choice(LEX.plants)
        facts[(country, "founded")] = str(rng.randint(120, 1890))
        facts[(country, "export")] = rng.choice(GOODS)
    return World(facts)
