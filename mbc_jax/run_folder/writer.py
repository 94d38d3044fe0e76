"""Writing a run folder: `RunWriter` (process 0 only; on the other processes every call does nothing) and
its metrics.jsonl log, `MetricsLog`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from mbc_jax import distributed
from mbc_jax.paths import UrlPath, as_path, atomic_write, staged
from mbc_jax.run_folder.files import (
    CONFIG,
    HEALTH,
    LEGS,
    MEMORIZATION,
    MEMORIZATION_COLUMNS,
    METRICS,
    MODEL,
    NO_TARGET,
    RECORDS,
    RECORDS_COLUMNS,
    SAMPLING,
    SAMPLING_COLUMNS,
    SUMMARY,
    snapshot_name,
    write_csv,
)


class MetricsLog:
    """metrics.jsonl, one JSON line per record, and the trackers every record also goes to.

    Local file: each line is appended and flushed at once. URL: object stores have no append, so the lines
    are kept in memory and the whole file is rewritten with one (atomic) put at `flush()`: before every
    checkpoint save (so a run resumed from any checkpoint finds every line up to it), every
    `FLUSH_SECONDS` (so the file shows progress) and at the end. A kill loses at most the lines after the
    last checkpoint, which the resumed run drops anyway (`RunWriter.rewind`) and writes again. Each put
    sends the whole file: about 0.5 KB a line, so 10,000 log lines are a 5 MB put."""

    FLUSH_SECONDS = 60.0

    def __init__(self, path: Path | UrlPath | None, trackers: Sequence[Any] = ()):
        self.path, self.trackers = path, list(trackers)
        self._file: IO | None = None
        self._lines: list[str] = []
        self._unsaved, self._saved_at = False, time.monotonic()
        if isinstance(path, UrlPath):
            self._lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
        else:
            self._file = open(path if path is not None else os.devnull, "a")

    def __call__(self, rec: dict) -> None:
        line = json.dumps(rec) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._lines.append(line)
            self._unsaved = True
            if time.monotonic() - self._saved_at >= self.FLUSH_SECONDS:
                self.flush()
        for t in self.trackers:
            t.log(rec, rec["step"])

    def flush(self) -> None:
        if self._unsaved:
            atomic_write(self.path, "".join(self._lines))
            self._unsaved, self._saved_at = False, time.monotonic()

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
            self.flush()
        finally:
            for t in self.trackers:
                t.close()


class RunWriter:
    """Writes a run folder. Only process 0 writes; on the others every call does nothing."""

    def __init__(self, path: str | Path | UrlPath):
        self.path = as_path(path)
        self.writes = distributed.is_main()

    def _write(self, name: str, content: Any, **kw) -> None:
        if self.writes:
            atomic_write(self.path / name, content, **kw)

    def saved_config(self) -> dict | None:
        f = self.path / CONFIG
        return (yaml.safe_load(f.read_text()) or {}) if f.is_file() else None

    def write_config(self, config: dict) -> None:
        self._write(CONFIG, yaml.safe_dump(config, sort_keys=False))

    def write_model(self, hf_config: dict, tokenizer: Any) -> None:
        """The model's config.json and tokenizer, kept with the run for export."""
        self._write(f"{MODEL}/config.json", json.dumps(hf_config, indent=2) + "\n")
        if tokenizer is not None and self.writes:
            with staged(self.path / MODEL) as folder:  # a URL: saved locally, then uploaded
                tokenizer.save_pretrained(str(folder))

    def write_records(self, splits: dict[str, Sequence[Any]]) -> None:
        rows = [row for split, xs in splits.items() for row in _record_rows(split, xs)]
        if self.writes:
            write_csv(self.path / RECORDS, rows, RECORDS_COLUMNS)

    def write_no_target(self, examples: Sequence[Any]) -> None:
        """no_target.csv: the training records with no loss target (records.csv's columns, split "no_target");
        removed when there are none, so a folder never keeps a stale list."""
        rows = _record_rows("no_target", examples)
        if not self.writes:
            return
        if rows:
            write_csv(self.path / NO_TARGET, rows, RECORDS_COLUMNS)
        elif (self.path / NO_TARGET).exists():
            (self.path / NO_TARGET).unlink()

    def has_snapshot(self, step: int) -> bool:
        return (self.path / MEMORIZATION / snapshot_name(step)).exists()

    def write_snapshot(self, step: int, rows: list[dict]) -> None:
        if self.writes:
            write_csv(self.path / MEMORIZATION / snapshot_name(step), rows, MEMORIZATION_COLUMNS)

    def rewind(self, step: int) -> None:
        """On resume from the checkpoint of `step`: drop the metric lines and snapshots of later steps
        (they were written after that checkpoint and are written again). The param snapshots of later
        steps are orbax's, dropped by `checkpoints.Checkpoints.rewind` on every process."""
        if not self.writes:
            return
        metrics = self.path / METRICS
        if metrics.exists():
            keep = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            atomic_write(metrics, "".join(k + "\n" for k in keep))
        for f in (self.path / MEMORIZATION).glob("step_*.csv"):
            if int(f.stem[5:]) > step:
                f.unlink()

    @contextlib.contextmanager
    def metrics(self, trackers: Sequence[Any] = ()) -> Iterator[MetricsLog]:
        """`emit(record)`: appends a line to metrics.jsonl and hands the record to each of `trackers`
        (mbc_jax/trackers.py: `log(record, step)`, closed at the end). `emit.flush()` stores every line
        emitted so far (the trainer calls it before each checkpoint save)."""
        log = MetricsLog(self.path / METRICS if self.writes else None, trackers)
        try:
            yield log
        finally:
            log.close()

    def last_eval(self) -> dict:
        """The last evaluation record of metrics.jsonl ({} if none)."""
        path, last = self.path / METRICS, {}
        for line in (path.read_text().splitlines() if path.exists() else []):
            rec = json.loads(line)
            if rec.get("eval"):
                last = rec
        return last

    def write_sampling(self, examples: Sequence[Any], counts: np.ndarray, weights: np.ndarray) -> None:
        rows = [{"index": e.index, "id": e.id, "category": e.category, "draws": int(c), "weight": float(w)}
                for e, c, w in zip(examples, counts, weights)]
        if self.writes:
            write_csv(self.path / SAMPLING, rows, SAMPLING_COLUMNS)

    def read_legs(self) -> list[dict]:
        """The run's legs so far (one per `train` process that trained steps; legs.json), oldest first."""
        f = self.path / LEGS
        return json.loads(f.read_text()) if f.is_file() else []

    def read_health(self) -> list[dict]:
        """MBC's weights at each refresh so far (mbc_health.jsonl), oldest first."""
        f = self.path / HEALTH
        return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []

    def write_health(self, records: list[dict]) -> None:
        self._write(HEALTH, "".join(json.dumps(r) + "\n" for r in records))

    def write_legs(self, legs: list[dict]) -> None:
        self._write(LEGS, json.dumps(legs, indent=2) + "\n")

    def write_summary(self, summary: dict) -> None:
        self._write(SUMMARY, json.dumps(summary, indent=2) + "\n")


def _record_rows(split: str, examples: Sequence[Any]) -> list[dict]:
    """records.csv's rows (RECORDS_COLUMNS) of `examples`, labelled `split`."""
    return [{"index": e.index, "id": e.id, "category": e.category, "split": split, "tokens": len(e),
             "response_tokens": e.response_tokens} for e in examples]
