"""Appendix A: the training records per category, their count and mean length in tokens.

    python -m experiments.appendix_a_categories --runs runs/demo/mbc --out figures/

Read from each run's records.csv, with no re-tokenizing: `tokens` is a record's length as the run
tokenized it (the whole templated dialogue: instruction, context, template markers, response and
its EOS; after truncation to `max_length`), `response_tokens` its response tokens (with the EOS).
Per category of the training split: the number of records, their share, the mean of both lengths,
and how many records sit at `max_length` (truncated, or exactly that long); the last row is all
records. Categories are listed by count (most first), then by name. Runs that trained on the same
records with the same tokenizer share one table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax.run_folder import RunFolder

NAME = "appendix_a_categories"
TITLE = "Appendix A: training records per category"
COLUMNS = ("run", "category", "records", "share", "mean_tokens", "mean_response_tokens", "at_max_length")
TABLE_KEYS = COLUMNS[1:]


def category_rows(run: RunFolder) -> list[dict]:
    """One row per category of the run's training records (by count, then name), and an "all" row."""
    r = run.records
    train = r["split"] == "train"
    if not train.any():
        raise common.UserError(f"{run.path / 'records.csv'}: no record with split 'train'")
    cats = np.array([str(c) for c in r["category"][train]], dtype=object)
    tokens = np.asarray(r["tokens"][train], np.float64)
    response = np.asarray(r["response_tokens"][train], np.float64)
    max_length = run.config.get("max_length")
    counts = {c: int((cats == c).sum()) for c in set(cats)}
    rows = []
    for cat in [*sorted(counts, key=lambda c: (-counts[c], c)), "all"]:
        sel = np.ones(len(cats), bool) if cat == "all" else cats == cat
        rows.append({"run": run.label, "category": cat, "records": int(sel.sum()), "share": float(sel.mean()),
                     "mean_tokens": float(tokens[sel].mean()), "mean_response_tokens": float(response[sel].mean()),
                     "at_max_length": int((tokens[sel] >= max_length).sum()) if max_length else None})
    return rows


def table_markdown(rows: list[dict]) -> str:
    return common.markdown_table(
        [[("**all**" if r["category"] == "all" else r["category"]), r["records"], common.pct(r["share"]),
          fmt(r["mean_tokens"], 1), fmt(r["mean_response_tokens"], 1),
          "n/a" if r["at_max_length"] is None else r["at_max_length"]] for r in rows],
        ["category", "training records", "share", "mean length (tokens, full dialogue)",
         "mean response length (tokens)", "at max_length"])


def describe(rows: list[dict], labels: list[str]) -> str:
    total, cats = rows[-1], rows[:-1]
    longest = max(cats, key=lambda r: r["mean_tokens"])
    shortest = min(cats, key=lambda r: r["mean_tokens"])
    s = (f"{', '.join(labels)}: {total['records']} training records in {len(cats)} categories, "
         f"{fmt(total['mean_tokens'], 1)} tokens long on average ({fmt(total['mean_response_tokens'], 1)} of them "
         f"response); the largest category is {cats[0]['category']} ({cats[0]['records']} records), the longest "
         f"records on average are {longest['category']} ({fmt(longest['mean_tokens'], 1)} tokens), the shortest "
         f"{shortest['category']} ({fmt(shortest['mean_tokens'], 1)}).")
    if total["at_max_length"]:
        s += f" {total['at_max_length']} records reach max_length (truncated, or exactly that long)."
    return s


def build(runs: Sequence[RunFolder], out: str | Path) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[tuple, tuple[list[str], list[dict]]] = {}  # identical tables (same records) are shown once
    every = []
    for run in runs:
        rows = category_rows(run)
        every += rows
        key = tuple(tuple(r[k] for k in TABLE_KEYS) for r in rows)
        tables.setdefault(key, ([], rows))[0].append(run.label)
    csv_path = common.write_csv(out / f"{NAME}.csv", every, COLUMNS)
    paragraph = ("Lengths are tokens as each run tokenized its records (records.csv): the whole templated dialogue "
                 "(instruction, context, template markers, response and EOS) after truncation to max_length, and "
                 "the response with its EOS. ") + " ".join(describe(rows, labels) for labels, rows in tables.values())
    extra = "\n\n".join((f"Runs: {', '.join(labels)}\n\n" if len(tables) > 1 else "") + table_markdown(rows)
                        for labels, rows in tables.values())
    md = common.write_markdown(out, NAME, TITLE, paragraph, None, [csv_path], extra=extra)
    return Artifact(NAME, TITLE, None, [csv_path], md, paragraph, {"rows": every})


def main(argv: list[str] | None = None) -> int:
    args = common.base_parser(NAME, __doc__).parse_args(argv)
    return common.run_cli(lambda: build(common.open_runs(args.runs, args.labels), args.out))


if __name__ == "__main__":
    sys.exit(main())
