"""The run folder's format (docs/run_folder.md): its file names, the CSV columns, how a CSV cell is written
and read back, and where its snapshots and checkpoints lie."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from mbc_jax import UserError
from mbc_jax.paths import UrlPath, as_path, atomic_write

CONFIG, RECORDS, METRICS, SAMPLING, SUMMARY, LEGS = (
    "config.yaml", "records.csv", "metrics.jsonl", "sampling.csv", "summary.json", "legs.json"
)
MEMORIZATION, CHECKPOINTS, TENSORBOARD, MODEL, DATA = "memorization", "checkpoints", "tensorboard", "model", "data"
HEALTH = "mbc_health.jsonl"  # MBC's weights at each refresh: effective sample size, largest weight, ...
NO_TARGET = "no_target.csv"  # training records left out: no loss target after truncation (never drawn)
PARAMS = "params"  # parameters-only snapshots, one per checkpoint step, never deleted by retention

RECORDS_COLUMNS = ("index", "id", "category", "split", "tokens", "response_tokens")
# Membership signals (mbc_jax/scoring.py, issue 32), appended after the columns above: Min-K% Prob, Min-K%++ and
# the zlib ratio, over the full dialogue and the response; empty where a scorer ran without them.
MEMBERSHIP_COLUMNS = ("min_k", "response_min_k", "min_k_pp", "response_min_k_pp", "zlib_ratio", "response_zlib_ratio")
MEMORIZATION_COLUMNS = ("step", "split", "index", "id", "category", "tokens", "response_tokens",
                        "response_tokens_no_eos", "exact_match", "response_exact_match", "response_exact_match_no_eos",
                        "perplexity", "response_perplexity", "entropy", "response_entropy", "draws",
                        *MEMBERSHIP_COLUMNS)
SAMPLING_COLUMNS = ("index", "id", "category", "draws", "weight")
INT_COLUMNS = ("step", "index", "tokens", "response_tokens", "response_tokens_no_eos", "draws")



def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(float(v)) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def write_csv(path: str | Path, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Rows (dicts) -> CSV, atomically; None / nan -> empty cell, floats with full precision."""

    def body(f: IO) -> None:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])

    return atomic_write(path, body, newline="")


def read_csv(path: str | Path | UrlPath) -> dict[str, np.ndarray]:
    """{column: array} of a CSV file. Columns whose non-empty cells all parse as numbers become
    float64 (empty cells -> nan), or int64 for the integer columns of the run folder when no
    cell is empty; the rest stay arrays of str."""
    path = as_path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if header is None:
        raise UserError(f"{path}: empty file (no header row)")
    for lineno, row in enumerate(rows, 2):
        if len(row) != len(header):
            raise UserError(f"{path}:{lineno}: {len(row)} cells but the header has {len(header)}; "
                            "the file is damaged: rerun the step that wrote it")
    return {name: _column([r[j] for r in rows], name) for j, name in enumerate(header)}


def _column(cells: list[str], name: str) -> np.ndarray:
    try:
        values = np.array([float(c) if c != "" else math.nan for c in cells], np.float64)
    except ValueError:
        return np.array(cells, dtype=object)
    if name in INT_COLUMNS and not np.isnan(values).any() and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values


def select(table: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in table.items()}


def snapshot_name(step: int) -> str:
    return f"step_{step:08d}.csv"


def saved_steps(folder: str | Path | UrlPath) -> list[int]:
    """Steps of the complete orbax checkpoints in `folder`. Orbax writes a step into
    `<step>.orbax-checkpoint-tmp*` and renames it to `<step>` only once complete (with its
    `_CHECKPOINT_METADATA`), so a save cut short (kill -9, full disk) is never listed. On gs:// (no
    rename) orbax writes `<step>` in place, `_CHECKPOINT_METADATA` first, and marks it complete with
    `commit_success.txt` last: behind a URL both must be there."""
    folder = as_path(folder)
    if not folder.is_dir():
        return []
    marks = ["_CHECKPOINT_METADATA"] + ([] if isinstance(folder, Path) else ["commit_success.txt"])
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.is_dir() and p.name.isdigit() and all((p / m).exists() for m in marks))


def weight_sources(run_dir: str | Path | UrlPath) -> dict[int, Path | UrlPath]:
    """{step: the orbax folder its weights are read from}, for every step with loadable weights: the full
    checkpoint (checkpoints/<step>, float32 master weights: exact) where retention kept one, else the
    parameters-only snapshot (params/<step>, in the snapshot dtype: exact only when that is float32)."""
    run_dir = as_path(run_dir)
    out = {s: run_dir / PARAMS / str(s) for s in saved_steps(run_dir / PARAMS)}
    out.update({s: run_dir / CHECKPOINTS / str(s) for s in saved_steps(run_dir / CHECKPOINTS)})
    return dict(sorted(out.items()))


def data_paths(cfg: Any, run_dir: Path | UrlPath) -> tuple[str, str | None]:
    """(train, validation) data of a `TrainConfig` as the run reads them: the demo's generated files
    live in the run folder's data/."""
    if cfg.data == "demo":
        return str(run_dir / DATA / "data.jsonl"), cfg.val_data or str(run_dir / DATA / "valid.jsonl")
    return cfg.data, cfg.val_data
