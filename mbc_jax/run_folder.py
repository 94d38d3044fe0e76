"""The run folder: the one writer and reader of the format in docs/run_folder.md.

`mbc-jax train` writes through `RunWriter` (process 0 only; the other processes' calls do
nothing); `experiments/` and any other reader go through `RunFolder`:

    run = RunFolder.open("runs/demo/mbc")
    run.memorization_steps()                  # [0, 75, 150, ...]
    table = run.memorization(150, "train")    # {column: numpy array}, one entry per record
    steps, index, em = run.record_matrix("exact_match")   # [checkpoints, records]

Every file is written atomically (`atomic_write`): a reader never sees half a file. The run folder may
be a local path or a URL (gs://, any fsspec URL): every path goes through `mbc_jax.paths.as_path`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from mbc_jax import UserError, distributed
from mbc_jax import config as config_lib
from mbc_jax.data import Template, load_records, tokenize
from mbc_jax.data.template import CHAT
from mbc_jax.models import load_tokenizer
from mbc_jax.paths import UrlPath, as_path, atomic_write, fetch, is_url, staged

CONFIG, RECORDS, METRICS, SAMPLING, SUMMARY = (
    "config.yaml", "records.csv", "metrics.jsonl", "sampling.csv", "summary.json"
)
MEMORIZATION, CHECKPOINTS, TENSORBOARD, MODEL, DATA = "memorization", "checkpoints", "tensorboard", "model", "data"
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


# ----------------------------------------------------------------------------- files


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


# ----------------------------------------------------------------------------- writing


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
        rows = [{"index": e.index, "id": e.id, "category": e.category, "split": split, "tokens": len(e),
                 "response_tokens": e.response_tokens} for split, xs in splits.items() for e in xs]
        if self.writes:
            write_csv(self.path / RECORDS, rows, RECORDS_COLUMNS)

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

    def write_summary(self, summary: dict) -> None:
        self._write(SUMMARY, json.dumps(summary, indent=2) + "\n")


# ----------------------------------------------------------------------------- reading


def fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e+")


@dataclasses.dataclass
class RunFolder:
    """A run folder as written by `mbc-jax train` (read-only)."""

    path: Path | UrlPath
    config: dict
    records: dict[str, np.ndarray]
    label: str = ""
    _mem: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path | UrlPath, label: str | None = None) -> RunFolder:
        path = as_path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such run folder (pass the `out` folder of `mbc-jax train`)")
        cfg_path = path / CONFIG
        if not cfg_path.is_file():
            raise UserError(f"{cfg_path}: missing; {path} is not a run folder written by `mbc-jax train`")
        config = yaml.safe_load(cfg_path.read_text()) or {}
        rec_path = path / RECORDS
        if not rec_path.is_file():
            raise UserError(f"{rec_path}: missing; the run never got past loading its data: rerun `mbc-jax train`")
        run = cls(path, config, read_csv(rec_path))
        run.label = label or run.default_label()
        if not run.memorization_steps():
            raise UserError(f"{path / MEMORIZATION}: no step_*.csv files; the run has not reached its first "
                            "checkpoint (or track_memorization is false)")
        return run

    # -- config facts
    @property
    def sampler(self) -> str:
        return str(self.config.get("sampler", "?"))

    @property
    def learning_rate(self) -> float:
        return float(self.config.get("learning_rate", math.nan))

    @property
    def lr_label(self) -> str:
        return f"lr {fmt_lr(self.learning_rate)}"

    def default_label(self) -> str:
        name = {"mbc": "MBC", "uniform": "baseline"}.get(self.sampler, self.sampler)
        return f"{name} {self.lr_label}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.label).strip("_") or self.path.name

    @property
    def n_train(self) -> int:
        return int((self.records["split"] == "train").sum())

    @property
    def epoch_steps(self) -> int:
        """Steps per epoch-equivalent, as the trainer counts them (ceil(N / batch_size))."""
        return max(1, math.ceil(self.n_train / int(self.config.get("batch_size", 1))))

    # -- memorization snapshots
    def memorization_steps(self) -> list[int]:
        d = self.path / MEMORIZATION
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for f in d.iterdir() if (m := re.fullmatch(r"step_(\d+)\.csv", f.name)))

    def memorization(self, step: int, split: str | None = None) -> dict[str, np.ndarray]:
        if step not in self._mem:
            path = self.path / MEMORIZATION / snapshot_name(step)
            if not path.is_file():
                have = ", ".join(map(str, self.memorization_steps()))
                raise UserError(f"{path}: no memorization snapshot of step {step} (have: {have})")
            self._mem[step] = read_csv(path)
        table = self._mem[step]
        return table if split is None else select(table, table["split"] == split)

    def record_matrix(self, column: str, split: str = "train", steps: Sequence[int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps [S], record index [N], values [S, N]): one column of every snapshot, records in
        records.csv order (so row s, column n is record n's value at steps[s])."""
        steps = list(self.memorization_steps() if steps is None else steps)
        index = self.records["index"][self.records["split"] == split]
        pos = {int(i): n for n, i in enumerate(index)}
        out = np.full((len(steps), len(index)), np.nan)
        for s, step in enumerate(steps):
            t = self.memorization(step, split)
            for i, v in zip(t["index"], t[column]):
                out[s, pos[int(i)]] = v
        return np.asarray(steps, np.int64), index, out

    def first_last_snapshots(self, first_step: int | None = None) -> dict[str, int]:
        """{"first": step, "last": step} among the memorization snapshots: "first" is the first one
        after training began (step > 0) unless `first_step` names another."""
        steps = self.memorization_steps()
        if first_step is not None:
            if first_step not in steps:
                raise UserError(f"{self.path / MEMORIZATION}: no snapshot of step {first_step} "
                                f"(have: {', '.join(map(str, steps))})")
            return {"first": first_step, "last": steps[-1]}
        after = [s for s in steps if s > 0]
        return {"first": after[0] if after else steps[0], "last": steps[-1]}

    # -- weights: full checkpoints (resume keeps the last N) and parameters-only snapshots (all kept)
    def full_checkpoint_steps(self) -> list[int]:
        """Steps of the complete full train states in checkpoints/ (what resume reads)."""
        return saved_steps(self.path / CHECKPOINTS)

    def param_snapshot_steps(self) -> list[int]:
        """Steps of the complete parameters-only snapshots in params/."""
        return saved_steps(self.path / PARAMS)

    def checkpoint_steps(self) -> list[int]:
        """Steps with loadable weights: param snapshots and full checkpoints together (complete ones only);
        `mbc_jax.checkpoints.export_run` exports any of them."""
        return list(weight_sources(self.path))

    def first_last_checkpoints(self, first_step: int | None = None, log: Callable[[str], None] | None = None
                               ) -> dict[str, int]:
        """{"first": step, "last": step}: the first memorization snapshot after training began (step > 0),
        or `first_step` when given, and the last snapshot. Both must have weights (a param snapshot or a
        full checkpoint): a missing one is a UserError naming it, never another step in its place.
        `log` is told where each step's weights come from."""
        mem = self.memorization_steps()
        after = [s for s in mem if s > 0]
        wanted = {"first": first_step if first_step is not None else (after[0] if after else mem[0]),
                  "last": mem[-1]}
        sources = weight_sources(self.path)
        for which, step in wanted.items():
            if step not in sources:
                have = ", ".join(map(str, sources)) or "none"
                raise UserError(
                    f"{self.path / PARAMS / str(step)}: no weights of step {step} (the {which} checkpoint): no param "
                    f"snapshot and no full checkpoint of that step (steps with weights: {have}). Param snapshots are "
                    "written at every checkpoint step unless save_params is none, and never deleted by the run; "
                    "restore the folder, or retrain with save_params: snapshots")
        if log:
            log(f"{self.path}: " + ", ".join(f"{which} checkpoint: step {step} ({sources[step].parent.name}/{step})"
                                             for which, step in wanted.items()))
        return wanted

    # -- sampling, metrics
    def sampling(self) -> dict[str, np.ndarray]:
        path = self.path / SAMPLING
        if path.is_file():
            return read_csv(path)
        raise UserError(f"{path}: missing; the run has not finished (sampling.csv is written at the end)")

    def metrics(self) -> list[dict]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        out = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{lineno}: not valid JSON") from None
        return out

    def summary(self) -> dict | None:
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else None

    # -- the data the run trained on (for record texts and for re-tokenizing prompts)
    def data_path(self, split: str) -> str:
        """The file (or hf: id) the run read `split` from, as the trainer resolves it."""
        cfg = config_lib.from_dict(self.config, str(self.path / CONFIG))
        train, val = data_paths(cfg, self.path)
        return _resolve(train if split == "train" or not val else val, self.path)

    def load_records(self, split: str) -> list:
        """The Records of `split`, in records.csv order (matched by their index in the data file)."""
        path = self.data_path(split)
        c = self.config
        records, _ = load_records(path, schema=c.get("schema", "auto"), fields=c.get("fields"),
                                  tree=c.get("tree", "best"), tree_filter=c.get("tree_filter"))
        by_index = {r.index: r for r in records}
        wanted = self.records["index"][self.records["split"] == split]
        missing = [int(i) for i in wanted if int(i) not in by_index]
        if missing:
            raise UserError(f"{path}: has no record with index {missing[0]} ({len(missing)} missing) although "
                            f"{self.path / RECORDS} lists it; the data file changed since the run")
        return [by_index[int(i)] for i in wanted]

    def template(self):
        t = self.config.get("template")
        return Template.from_spec(t if not t or t == CHAT else _resolve(t, self.path))

    def examples(self, split: str, tokenizer: Any, vocab_size: int | None = None) -> tuple[list, list]:
        """(Records, Examples) of `split` tokenized exactly as the run tokenized them; checks the
        token counts against records.csv."""
        records = self.load_records(split)
        max_length = int(self.config.get("max_length", 512))
        examples, _ = tokenize(records, tokenizer, self.template(), max_length, vocab_size=vocab_size)
        want = self.records["tokens"][self.records["split"] == split]
        for ex, n in zip(examples, want):
            if len(ex) != int(n):
                raise UserError(f"{self.data_path(split)}: record {ex.id} tokenizes to {len(ex)} tokens but the run "
                                f"had {int(n)} ({self.path / RECORDS}); the data or tokenizer changed since the run")
        return records, examples

    def tokenizer(self):
        tok = load_tokenizer(fetch(self.path / MODEL))  # a URL: a local copy
        if tok is None:
            raise UserError(f"{self.path / MODEL}: no tokenizer files; this experiment needs the run's tokenizer")
        return tok


def _resolve(p: str, run_dir: Path | UrlPath) -> str:
    """A data/template path as the run saw it: as given (hf: ids, URLs and absolute paths), else relative
    to the current folder, else to the run folder's parent."""
    if p.startswith("hf:") or is_url(p) or Path(p).is_absolute() or Path(p).exists():
        return p
    for base in (run_dir.parent, run_dir):
        if (base / p).exists():
            return str(base / p)
    return p
