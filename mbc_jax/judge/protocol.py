"""The judging protocol: the prompt template, the verdict format, which orders are judged, and how
the judged orders make one outcome.

- `--orders 1` (the default) is the paper's protocol (Section 4: one GPT-4 judgment per
  validation prompt): each pair is judged once, in an order drawn per pair from the seed
  (`seeded_order`). The paper does not say how it ordered the two answers; a seeded draw per pair
  is our choice, so that neither model is always shown first.
- `--orders 2` judges every pair in both orders, A's answer shown first (`a_first`) and B's answer
  shown first (`b_first`); a pair is a win for a model only when both orders pick it, otherwise a
  tie (the "consistent" outcome). The seeded order's judgment still gives the single-order outcome,
  the very judgment `--orders 1` with the same seed would make.
- The template labels whichever answer is shown first "Assistant A". A verdict must contain
  exactly one of [[A]], [[B]], [[C]] (C = tie); the same token may be repeated but no two
  different ones may appear. Anything else is an invalid verdict.

The template file has '#' header lines, then a `[system]` (optional) and a `[user]` section with
the placeholders {instruction}, {response_a} and {response_b}; the default is
`templates/figure4_judge_prompt.txt`, the paper's Figure 4 judge prompt verbatim (MT-Bench's pairwise
prompt; its first paragraph is the system message, as in MT-Bench). The old names {question},
{answer_a}, {answer_b} are no longer filled: a template that still uses them is refused with a
message saying how to rename them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mbc_jax import UserError
from mbc_jax.judge.answers import Pair

TEMPLATE_PATH = Path(__file__).parent.parent / "templates" / "figure4_judge_prompt.txt"
ORDERS = ("a_first", "b_first")
PROTOCOLS = (1, 2)  # --orders: 1 = the paper's (one seeded order per pair), 2 = both orders
_VERDICT_RE = re.compile(r"\[\[([ABC])\]\]")
PLACEHOLDERS = ("instruction", "response_a", "response_b")
_PLACEHOLDER_RE = re.compile(r"\{(instruction|response_a|response_b)\}")
_OLD_PLACEHOLDERS = {"question": "instruction", "answer_a": "response_a", "answer_b": "response_b"}


@dataclass(frozen=True)
class JudgeTemplate:
    """The judging prompt: an optional system message and a user message with placeholders."""

    system: str | None
    user: str
    path: str
    sha256: str

    def render(self, instruction: str, first: str, second: str) -> list[dict[str, str]]:
        """Chat messages for one presentation order (`first` is labelled Assistant A)."""
        values = {"instruction": instruction, "response_a": first, "response_b": second}

        def fill(text: str) -> str:  # one pass: placeholders inside a response stay literal
            return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)

        messages = [{"role": "user", "content": fill(self.user)}]
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": fill(self.system)})
        return messages


def load_template(path: str | Path | None = None) -> JudgeTemplate:
    """Parse a template file: '#' header lines, then `[system]` and `[user]` sections."""
    path = Path(path) if path is not None else TEMPLATE_PATH
    try:
        raw = path.read_text()
    except OSError as e:
        raise UserError(f"{path}: cannot read the judge template ({e.strerror})") from None
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for lineno, line in enumerate(raw.splitlines(), 1):
        marker = line.strip().lower()
        if marker in ("[system]", "[user]"):
            current = marker[1:-1]
            if current in sections:
                raise UserError(f"{path}:{lineno}: second {line.strip()} section")
            sections[current] = []
        elif current is None:
            if line.strip() and not line.startswith("#"):
                raise UserError(f"{path}:{lineno}: text before the first [system] or [user] "
                                "line; header lines must start with '#'")
        else:
            sections[current].append(line)
    if "user" not in sections:
        raise UserError(f"{path}: no [user] section; the template needs one")
    user = "\n".join(sections["user"]).strip("\n")
    system = "\n".join(sections["system"]).strip("\n") if "system" in sections else None
    text = (system or "") + user
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        old = [o for o, new in _OLD_PLACEHOLDERS.items() if new in missing and "{" + o + "}" in text]
        hint = (f"; rename the old {', '.join('{' + o + '}' for o in old)} to "
                f"{', '.join('{' + _OLD_PLACEHOLDERS[o] + '}' for o in old)} (the paper's Figure 4 names)"
                if old else "")
        raise UserError(f"{path}: placeholder(s) {', '.join('{' + m + '}' for m in missing)} missing{hint}")
    return JudgeTemplate(system, user, str(path), hashlib.sha256(raw.encode()).hexdigest())


class InvalidVerdict(ValueError):
    """The judge's reply does not contain exactly one kind of [[A]] / [[B]] / [[C]]."""


def parse_verdict(text: str | None) -> str:
    """'A', 'B' or 'C' (tie) from a judge reply; InvalidVerdict unless exactly one kind appears."""
    found = set(_VERDICT_RE.findall(text or ""))
    if len(found) != 1:
        what = "no verdict" if not found else "conflicting verdicts " + "/".join(
            f"[[{v}]]" for v in sorted(found))
        raise InvalidVerdict(what)
    return found.pop()


def winner_of(verdict: str, order: str) -> str:
    """Map a positional verdict to the model it favours: 'A', 'B' or 'tie'."""
    if verdict == "C":
        return "tie"
    first_is_a = order == "a_first"
    return "A" if (verdict == "A") == first_is_a else "B"


def combine(winner_a_first: str, winner_b_first: str) -> str:
    """A win needs both orders to agree; anything else is a tie."""
    return winner_a_first if winner_a_first == winner_b_first else "tie"


def shown(pair: Pair, order: str) -> tuple[str, str]:
    """(first, second): the two answers of `pair` in the order the judge sees them."""
    return (pair.answer_a, pair.answer_b) if order == "a_first" else (pair.answer_b, pair.answer_a)


def seeded_order(key: str, seed: int) -> str:
    """The presentation order of one pair under `--orders 1`: 'a_first' or 'b_first'.

    A fair coin per pair from sha256(seed, pair key): it depends only on the seed and the pair's
    own key (never on the other pairs or the file order), so a subset (`--limit`) or a rerun draws
    the same orders, and about half the pairs show A first.
    """
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return ORDERS[digest[0] & 1]


def orders_judged(orders: int, seeded: str) -> tuple[str, ...]:
    """The presentation orders a pair is judged in: the seeded one, or both."""
    if orders not in PROTOCOLS:
        raise ValueError(f"orders must be 1 or 2, got {orders!r}")
    return (seeded,) if orders == 1 else ORDERS


def words(text: str) -> int:
    """An answer's length in words (whitespace-separated), the unit of the length report."""
    return len(text.split())


def judgment(pair: Pair, entries: Mapping[str, dict], *, seeded: str, orders: int) -> dict:
    """One pair's judgment from its judge replies (`entries[order]`, verdict None if invalid).

    Holds the pair's key, id, index and category; `orders` and the `seeded_order`; per judged
    order the positional verdict, the winner it implies, the judge's text and the error of an
    invalid one (an order that was not judged has no such fields); `single` = the seeded order's
    winner; with both orders `consistent_outcome` (a win needs both orders to agree, else tie) and
    `consistent` (did they agree); `outcome` = the protocol's outcome (`single` with one order,
    `consistent_outcome` with two; None when a needed verdict is invalid); and the answer lengths
    (`words_a`, `words_b`, and `tokens_a`, `tokens_b` when the answer files carry `num_tokens`).
    """
    j: dict = {"key": pair.key, "id": pair.id, "index": pair.index, "category": pair.category,
               "orders": orders, "seeded_order": seeded}
    judged = orders_judged(orders, seeded)
    for order in judged:
        verdict = entries[order]["verdict"]
        j[f"verdict_{order}"] = verdict
        j[f"winner_{order}"] = winner_of(verdict, order) if verdict else None
    j["single"] = j[f"winner_{seeded}"]
    if orders == 2:
        ok = j["verdict_a_first"] is not None and j["verdict_b_first"] is not None
        j["consistent_outcome"] = combine(j["winner_a_first"], j["winner_b_first"]) if ok else None
        j["consistent"] = (j["winner_a_first"] == j["winner_b_first"]) if ok else None
    j["outcome"] = j["single"] if orders == 1 else j["consistent_outcome"]
    for order in judged:
        entry = entries[order]
        j[f"judge_text_{order}"] = entry.get("text")
        if entry["verdict"] is None:
            j[f"error_{order}"] = entry.get("error")
    j["words_a"], j["words_b"] = words(pair.answer_a), words(pair.answer_b)
    if pair.tokens_a is not None and pair.tokens_b is not None:
        j["tokens_a"], j["tokens_b"] = pair.tokens_a, pair.tokens_b
    return j


def identical_judgment(pair: Pair, *, seeded: str, orders: int) -> dict:
    """The judgment of a pair whose two answers are the same text: a tie made without asking the judge
    (`identical` True, no verdicts, no judge text), in the fields `judgment` gives a judged pair."""
    j: dict = {"key": pair.key, "id": pair.id, "index": pair.index, "category": pair.category,
               "orders": orders, "seeded_order": seeded, "identical": True, "single": "tie"}
    if orders == 2:
        j["consistent_outcome"], j["consistent"] = "tie", None
    j["outcome"] = "tie"
    j["words_a"], j["words_b"] = words(pair.answer_a), words(pair.answer_b)
    if pair.tokens_a is not None and pair.tokens_b is not None:
        j["tokens_a"], j["tokens_b"] = pair.tokens_a, pair.tokens_b
    return j
