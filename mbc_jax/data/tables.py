"""Rows read through Hugging Face `datasets` (an optional dependency: `pip install 'mbc-jax[hf]'`).

- local Parquet (`.parquet`) and CSV/TSV (`.csv`, `.tsv`) files; a CSV row's source is the line it
  starts on (quoted fields may span lines), every CSV value is read as text (no number or NA guessing),
  a Parquet row's source is `FILE:N`, N its 1-based row;
- hub data sets: `hf:NAME[:CONFIG][@REVISION][:SPLIT][?data_files=PATTERN[,PATTERN...]]`. One part
  after NAME is the split (`hf:NAME:test`); CONFIG, REVISION (a commit, tag or branch) and
  `data_files` pin exactly which data was read. The split defaults to `train`. NAME may also be a
  builder (`hf:json?data_files=a.jsonl`). A row's source is `SPEC:N`, N its 1-based row.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mbc_jax import UserError

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
_SPEC = re.compile(r"(?P<name>[^:@?]+)(?::(?P<config>[^:@?]+))?(?:@(?P<revision>[^:?]+))?(?::(?P<split>[^:@?]+))?"
                   r"(?:\?data_files=(?P<data_files>.+))?")


@dataclass(frozen=True)
class HubSpec:
    name: str
    config: str | None = None
    revision: str | None = None
    split: str = "train"
    data_files: tuple[str, ...] = ()


def parse_hf_spec(spec: str) -> HubSpec:
    """`hf:NAME[:CONFIG][@REVISION][:SPLIT][?data_files=...]` -> its parts (a lone `:PART` is the split)."""
    m = _SPEC.fullmatch(spec[len("hf:"):]) if spec.startswith("hf:") else None
    if m is None:
        raise UserError(f"{spec}: expected hf:NAME[:CONFIG][@REVISION][:SPLIT][?data_files=PATTERN,...]")
    config, revision, split = m["config"], m["revision"], m["split"]
    if config is not None and split is None and revision is None:
        config, split = None, config
    files = tuple(f for f in (m["data_files"] or "").split(",") if f)
    return HubSpec(m["name"], config, revision, split or "train", files)


def _datasets(what: str) -> Any:
    try:
        import datasets  # type: ignore[import-not-found]  # optional: the [hf] extra
    except ImportError:
        raise UserError(f"{what}: reading it needs the `datasets` library: pip install 'mbc-jax[hf]' (or "
                        "pip install datasets), or convert the data to a JSONL file") from None
    return datasets


def _clean(v: Any) -> Any:
    """A NaN (a missing number in a table) reads as a missing value."""
    return None if isinstance(v, float) and math.isnan(v) else v


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint (HF_ENDPOINT, default huggingface.co) accepts a connection now."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """`datasets` and `huggingface_hub` in offline mode for the block (the local cache only), then as they were:
    with no network they would otherwise retry each request for half a minute, printing every try."""
    import huggingface_hub.constants as hub_constants

    modules = [m for m in (getattr(datasets, "config", None), hub_constants) if hasattr(m, "HF_HUB_OFFLINE")]
    saved = [m.HF_HUB_OFFLINE for m in modules]
    for m in modules:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, value in zip(modules, saved):
            m.HF_HUB_OFFLINE = value


def iter_hub(spec: str) -> Iterator[tuple[str, Any, None]]:
    hub = parse_hf_spec(spec)
    datasets = _datasets(spec)
    # HF_HUB_OFFLINE=1: the user chose the local cache alone
    offline_set = bool(getattr(getattr(datasets, "config", None), "HF_HUB_OFFLINE", False))
    unreachable = not offline_set and not hub_reachable()
    try:
        with _offline(datasets) if unreachable else contextlib.nullcontext():
            ds = datasets.load_dataset(hub.name, hub.config, revision=hub.revision, split=hub.split,
                                       data_files=list(hub.data_files) or None)
    except Exception as e:  # network, unknown name or split, ...: all actionable by the user
        if unreachable or offline_set:
            why = "HF_HUB_OFFLINE is set" if offline_set else "the Hugging Face Hub cannot be reached (no network?)"
            raise UserError(f"{spec}: {why} and {hub.name!r} is not in the local datasets cache; download it to a "
                            "JSONL file and pass its path") from None
        raise UserError(f"{spec}: could not load {hub.name!r} ({type(e).__name__}: {e}); check the name, config, "
                        "revision, split and your network, or download it to a JSONL file and pass its path") from None
    for i, row in enumerate(ds):
        yield f"{spec}:{i + 1}", {k: _clean(v) for k, v in dict(row).items()}, None


def _csv_lines(path: str, sep: str) -> tuple[list[str], list[int]]:
    """The header and the line each data row starts on, as a CSV reader sees them (blank lines skipped)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=sep)
        header, starts, line = [], [], 1
        for row in reader:
            if row:
                if header:
                    starts.append(line)
                else:
                    header = row
            line = reader.line_num + 1
    return header, starts


def iter_table(path: str, kind: str) -> Iterator[tuple[str, Any, None]]:
    """Rows of a local Parquet or CSV/TSV file (`kind`: parquet, csv or tsv)."""
    datasets = _datasets(path)
    try:
        if kind == "parquet":
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
            sources = [f"{path}:{i + 1}" for i in range(len(ds))]
        else:
            sep = "\t" if kind == "tsv" else ","
            header, starts = _csv_lines(path, sep)
            ds = datasets.load_dataset("csv", data_files=path, split="train", sep=sep, keep_default_na=False,
                                       na_filter=False, converters={c: str for c in header})
            if len(ds) != len(starts):  # the two readers disagree: fall back to row numbers
                starts = [i + 2 for i in range(len(ds))]
            sources = [f"{path}:{n}" for n in starts]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: cannot read it as {kind} ({type(e).__name__}: {e})") from None
    for source, row in zip(sources, ds):
        yield source, {k: _clean(v) for k, v in dict(row).items()}, None
