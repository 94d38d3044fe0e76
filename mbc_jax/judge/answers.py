"""Answer files (`mbc_jax.answers_file`) as the judge reads them: two models' answers, paired.

Records are matched by `id`, or by `index` when some record has no `id`; an instruction must read
the same in both files. Records found in only one file are reported, not judged.

The judge reads each line's `instruction` (the record's instruction, plus its context under
"Context:", as `mbc-jax generate` writes it), never `prompt` (the training template's rendering,
with its `Human: ... Assistant:` markers). A line without `instruction` is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mbc_jax import UserError
from mbc_jax.answers_file import read_answer_lines


@dataclass(frozen=True)
class Pair:
    """One prompt answered by both models."""

    key: str
    id: object
    index: object
    category: str
    instruction: str  # what the judge's {instruction} receives
    answer_a: str
    answer_b: str
    where_a: str  # file:line
    where_b: str
    tokens_a: int | None = None  # the answer's `num_tokens` (generated tokens), when the file has it
    tokens_b: int | None = None


@dataclass
class Matched:
    """The pairs two answer files have in common, the field that matched them, and the rest."""

    pairs: list[Pair]
    field: str  # "id" or "index"
    only_a: list[str]
    only_b: list[str]


def read_answers(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line of a JSONL answer file, each with what the judge reads."""
    path = Path(path)
    records = read_answer_lines(path)
    for lineno, rec in records:
        if not isinstance(rec.get("instruction"), str):
            raise UserError(f"{path}:{lineno}: field `instruction` missing or not a string; the judge "
                            "reads the record's instruction, not the template-rendered `prompt`: "
                            "regenerate the file with this version of `mbc-jax generate`")
        if not isinstance(rec.get("output_text"), str):
            raise UserError(f"{path}:{lineno}: field `output_text` missing or not a string; answer "
                            "files need `instruction` and `output_text` (from `mbc-jax generate`)")
    if not records:
        raise UserError(f"{path}: no records")
    return records


def _key_field(a: list[tuple[int, dict]], b: list[tuple[int, dict]]) -> str:
    for name in ("id", "index"):
        if all(rec.get(name) is not None for _, rec in a + b):
            return name
    raise UserError("cannot match the answer files: every record of both files needs an `id` "
                    "(or else an `index`) field")


def _tokens(rec: dict) -> int | None:
    n = rec.get("num_tokens")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def match_answers(path_a: str | Path, path_b: str | Path) -> Matched:
    """Pair the records of two answer files by `id` (else `index`), in A's order."""
    a, b = read_answers(path_a), read_answers(path_b)
    name = _key_field(a, b)

    def by_key(path, records):
        out: dict[str, tuple[int, dict]] = {}
        for lineno, rec in records:
            k = str(rec[name])
            if k in out:
                raise UserError(f"{path}:{lineno}: duplicate {name} {k!r} (first on line "
                                f"{out[k][0]}); records must be unique to be matched")
            out[k] = (lineno, rec)
        return out

    map_a, map_b = by_key(path_a, a), by_key(path_b, b)
    pairs = []
    for k, (line_a, rec_a) in map_a.items():
        if k not in map_b:
            continue
        line_b, rec_b = map_b[k]
        if rec_a["instruction"].strip() != rec_b["instruction"].strip():
            raise UserError(f"{path_b}:{line_b}: instruction of {name} {k!r} differs from "
                            f"{path_a}:{line_a}; both files must answer the same instructions")
        category = rec_a.get("category") or rec_b.get("category") or "(none)"
        pairs.append(Pair(k, rec_a.get("id"), rec_a.get("index"), str(category),
                          rec_a["instruction"], rec_a["output_text"], rec_b["output_text"],
                          f"{path_a}:{line_a}", f"{path_b}:{line_b}",
                          _tokens(rec_a), _tokens(rec_b)))
    only_a = [k for k in map_a if k not in map_b]
    only_b = [k for k in map_b if k not in map_a]
    if not pairs:
        raise UserError(f"no record of {path_a} matches one of {path_b} by {name}; are they "
                        "answers to the same data?")
    return Matched(pairs, name, only_a, only_b)
