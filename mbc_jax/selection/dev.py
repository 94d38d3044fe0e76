"""The development prompts that checkpoint selection judges on, and where they come from.

The paper picks its checkpoint on a 50-example development set kept apart from its validation
set. The project's choice, stated wherever the selection is reported:

- default: a seeded sample (without replacement, kept in records.csv order) of N records of the
  run's own validation split. Those prompts are held out from training but ARE part of the
  validation split, so a judged comparison on that split must leave them out to keep the paper's
  separation (`experiments/reproduce.py` does); `selection.json` lists their ids for that.
- `--dev-data FILE`: a seeded sample of N records of another file (any schema `mbc-jax` reads).
  How many of them also appear (same content) in the run's training or validation split is
  counted and reported, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mbc_jax import UserError
from mbc_jax.data import load_records
from mbc_jax.run_folder import RECORDS, RunFolder


@dataclass
class DevSet:
    """The dev prompts (Records) and a description of their source."""

    records: list
    source: str  # "validation split" or "file"
    description: str
    path: str  # the file the records were read from
    overlap: dict[str, int] = field(default_factory=dict)  # split -> dev records with the same content there

    @property
    def ids(self) -> list[str]:
        return [str(r.id) for r in self.records]


def _sample(n_total: int, n: int, seed: int) -> list[int]:
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def dev_set(run: RunFolder, n: int, seed: int = 0, dev_data: str | None = None) -> DevSet:
    """N dev prompts: a seeded sample of the run's validation split, or of `dev_data` (see the module docstring)."""
    if n < 1:
        raise UserError(f"--dev {n}: must be >= 1")
    has_val = bool((run.records["split"] == "val").any())
    if dev_data is None:
        if not has_val:
            raise UserError(f"{run.path / RECORDS}: the run has no validation split to draw dev prompts from; pass "
                            "--dev-data FILE (records held out from training)")
        pool, path = run.load_records("val"), run.data_path("val")
        if n > len(pool):
            raise UserError(f"--dev {n}: the run's validation split ({path}) has only {len(pool)} records; use "
                            f"--dev {len(pool)} or less, or --dev-data FILE")
        chosen = [pool[i] for i in _sample(len(pool), n, seed)]
        text = (f"{n} of the {len(pool)} validation records of the run ({path}), a seeded sample (seed {seed}); they "
                "are part of the validation split, so comparisons judged on that split should leave these ids out")
        return _checked(DevSet(chosen, "validation split", text, path, {"val": n}))
    pool, _ = load_records(dev_data, schema=str(run.config.get("schema", "auto")))
    if n > len(pool):
        raise UserError(f"--dev {n}: {dev_data} has only {len(pool)} records; use --dev {len(pool)} or less")
    chosen = [pool[i] for i in _sample(len(pool), n, seed)]
    keys = {r.content_key() for r in chosen}
    overlap = {split: sum(r.content_key() in keys for r in run.load_records(split))
               for split in ("train", "val") if (run.records["split"] == split).any()}
    shared = ", ".join(f"{k} {v}" for k, v in overlap.items() if v)
    text = (f"{n} of the {len(pool)} records of {dev_data}, a seeded sample (seed {seed}); records with the same "
            f"content in the run's splits: {shared or 'none'}")
    return _checked(DevSet(chosen, "file", text, str(dev_data), overlap))


def _checked(dev: DevSet) -> DevSet:
    seen: dict[str, int] = {}
    for r in dev.records:
        if str(r.id) in seen:
            raise UserError(f"{r.source}: dev records {seen[str(r.id)]} and {r.index} share the id {r.id!r}; "
                            "answers are matched by id, so ids must be unique")
        seen[str(r.id)] = r.index
    return dev
