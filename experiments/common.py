"""Shared helpers of the experiment modules: read run folders, write CSV / Markdown, draw PNGs.

Every experiment reads only what `mbc-jax train` wrote (docs/run_folder.md):

    run = RunFolder.open("runs/demo/mbc")
    run.memorization_steps()                  # [0, 75, 150, ...]
    table = run.memorization(150, "train")    # {column: numpy array}, one entry per record
    steps, index, em = run.record_matrix("exact_match")   # [checkpoints, records]

and writes, into `--out`, `<name>.png`, `<name>.csv` (the numbers behind the figure) and
`<name>.md` (the figure, and a paragraph whose numbers come from the data). Figures are drawn on
matplotlib `Figure` objects with the Agg canvas: no pyplot, no global state, no display needed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbc_jax import UserError, exit_code

INT_COLUMNS = ("step", "index", "tokens", "response_tokens", "draws")
FIRST_LAST = ("first", "last")


# ----------------------------------------------------------------------------- CSV in and out


def read_csv(path: str | Path) -> dict[str, np.ndarray]:
    """{column: array} of a CSV file. Columns whose non-empty cells all parse as numbers become
    float64 (empty cells -> nan), or int64 for the integer columns of the run folder when no
    cell is empty; the rest stay arrays of str."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if header is None:
        raise UserError(f"{path}: empty file (no header row)")
    for lineno, row in enumerate(rows, 2):
        if len(row) != len(header):
            raise UserError(f"{path}:{lineno}: {len(row)} cells but the header has {len(header)}; "
                            "the file is damaged: rerun the step that wrote it")
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [r[j] for r in rows]
        out[name] = _column(cells, name)
    return out


def _column(cells: list[str], name: str) -> np.ndarray:
    try:
        values = np.array([float(c) if c != "" else math.nan for c in cells], np.float64)
    except ValueError:
        return np.array(cells, dtype=object)
    if name in INT_COLUMNS and not np.isnan(values).any() and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values


def write_csv(path: str | Path, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Rows (dicts) -> CSV; None / nan -> empty cell, floats with full precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
    tmp.replace(path)
    return path


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def select(table: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in table.items()}


# ----------------------------------------------------------------------------- run folders


def fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e+")


@dataclasses.dataclass
class RunFolder:
    """A run folder as written by `mbc-jax train` (read-only)."""

    path: Path
    config: dict
    records: dict[str, np.ndarray]
    label: str = ""
    _mem: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path, label: str | None = None) -> "RunFolder":
        import yaml

        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such run folder (pass the `out` folder of `mbc-jax train`)")
        cfg_path = path / "config.yaml"
        if not cfg_path.is_file():
            raise UserError(f"{cfg_path}: missing; {path} is not a run folder written by `mbc-jax train`")
        config = yaml.safe_load(cfg_path.read_text()) or {}
        rec_path = path / "records.csv"
        if not rec_path.is_file():
            raise UserError(f"{rec_path}: missing; the run never got past loading its data: rerun `mbc-jax train`")
        run = cls(path, config, read_csv(rec_path))
        run.label = label or run.default_label()
        if not run.memorization_steps():
            raise UserError(f"{path / 'memorization'}: no step_*.csv files; the run has not reached its first "
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
        d = self.path / "memorization"
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for f in d.iterdir() if (m := re.fullmatch(r"step_(\d+)\.csv", f.name)))

    def memorization(self, step: int, split: str | None = None) -> dict[str, np.ndarray]:
        if step not in self._mem:
            path = self.path / "memorization" / f"step_{step:08d}.csv"
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
                raise UserError(f"{self.path / 'memorization'}: no snapshot of step {first_step} "
                                f"(have: {', '.join(map(str, steps))})")
            return {"first": first_step, "last": steps[-1]}
        after = [s for s in steps if s > 0]
        return {"first": after[0] if after else steps[0], "last": steps[-1]}

    # -- checkpoints, sampling, metrics
    def checkpoint_steps(self) -> list[int]:
        """Steps of the orbax checkpoints saved in checkpoints/ (complete ones only)."""
        d = self.path / "checkpoints"
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())

    def first_last_checkpoints(self, first_step: int | None = None, log: Callable[[str], None] | None = None
                               ) -> dict[str, int]:
        """{"first": step, "last": step} among the saved checkpoints. "first" is the earliest saved
        checkpoint after training began (step > 0), or `first_step` when given; when that one is
        gone (keep_checkpoints), the earliest saved one is used and `log` is told."""
        saved = self.checkpoint_steps()
        if not saved:
            raise UserError(f"{self.path / 'checkpoints'}: no saved checkpoints; the experiment needs model weights")
        wanted = first_step
        if wanted is None:
            mem = [s for s in self.memorization_steps() if s > 0]
            wanted = mem[0] if mem else saved[0]
        first = wanted if wanted in saved else min((s for s in saved if s >= wanted), default=saved[-1])
        if first != wanted and log:
            log(f"{self.path}: the checkpoint of step {wanted} is not kept (saved: {', '.join(map(str, saved))}); "
                f"using step {first} as the first checkpoint (train with keep_checkpoints large enough to keep it)")
        return {"first": first, "last": saved[-1]}

    def sampling(self) -> dict[str, np.ndarray]:
        path = self.path / "sampling.csv"
        if path.is_file():
            return read_csv(path)
        raise UserError(f"{path}: missing; the run has not finished (sampling.csv is written at the end)")

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
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
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # -- the data the run trained on (for record texts and for re-tokenizing prompts)
    def data_path(self, split: str) -> str:
        """The file (or hf: id) the run read `split` from, as the trainer resolves it."""
        from mbc_jax import config as config_lib
        from mbc_jax.train import data_paths

        cfg = config_lib.from_dict(self.config, str(self.path / "config.yaml"))
        train, val = data_paths(cfg, self.path)
        return _resolve(train if split == "train" or not val else val, self.path)

    def load_records(self, split: str) -> list:
        """The Records of `split`, in records.csv order (matched by their index in the data file)."""
        from mbc_jax.data import load_records

        path = self.data_path(split)
        records, _ = load_records(path, schema=self.config.get("schema", "auto"))
        by_index = {r.index: r for r in records}
        wanted = self.records["index"][self.records["split"] == split]
        missing = [int(i) for i in wanted if int(i) not in by_index]
        if missing:
            raise UserError(f"{path}: has no record with index {missing[0]} ({len(missing)} missing) although "
                            f"{self.path / 'records.csv'} lists it; the data file changed since the run")
        return [by_index[int(i)] for i in wanted]

    def template(self):
        from mbc_jax.data import Template

        t = self.config.get("template")
        return Template.from_file(_resolve(t, self.path)) if t else Template()

    def examples(self, split: str, tokenizer: Any, vocab_size: int | None = None) -> tuple[list, list]:
        """(Records, Examples) of `split` tokenized exactly as the run tokenized them; checks the
        token counts against records.csv."""
        from mbc_jax.data import tokenize

        records = self.load_records(split)
        max_length = int(self.config.get("max_length", 512))
        examples, _ = tokenize(records, tokenizer, self.template(), max_length, vocab_size=vocab_size)
        want = self.records["tokens"][self.records["split"] == split]
        for ex, n in zip(examples, want):
            if len(ex) != int(n):
                raise UserError(f"{self.data_path(split)}: record {ex.id} tokenizes to {len(ex)} tokens but the run "
                                f"had {int(n)} ({self.path / 'records.csv'}); the data or tokenizer changed since "
                                "the run")
        return records, examples

    def tokenizer(self):
        from mbc_jax.models import load_tokenizer

        tok = load_tokenizer(self.path / "model")
        if tok is None:
            raise UserError(f"{self.path / 'model'}: no tokenizer files; this experiment needs the run's tokenizer")
        return tok


def _resolve(p: str, run_dir: Path) -> str:
    """A data/template path as the run saw it: as given (hf: ids and absolute paths), else relative
    to the current folder, else to the run folder's parent."""
    if p.startswith("hf:") or Path(p).is_absolute() or Path(p).exists():
        return p
    for base in (run_dir.parent, run_dir):
        if (base / p).exists():
            return str(base / p)
    return p


def record_text(record: Any, template: Any = None, limit: int | None = 240) -> str:
    """One line of a record's text (prompt and response) for tables; `limit` characters at most."""
    if record.text is not None:
        text = record.text
    elif record.turns:
        from mbc_jax.data import Template

        text = "".join(t for t, _ in (template or Template()).segments(record))
    else:
        text = f"<{len(record.input_ids or [])} token ids>"
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def open_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[RunFolder]:
    if labels and len(labels) != len(paths):
        raise UserError(f"--labels: {len(labels)} labels for {len(paths)} runs; give one label per run")
    runs = [RunFolder.open(p, labels[i] if labels else None) for i, p in enumerate(paths)]
    seen: dict[str, int] = {}
    for r in runs:  # two runs with the same sampler and lr: tell them apart by folder name
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1 and not labels:
            r.label = f"{r.label} ({r.path.name})"
    return runs


# ----------------------------------------------------------------------------- checkpoints as models


@contextlib.contextmanager
def checkpoint_model(run: RunFolder, step: int, cache_dir: str | Path | None = None, mesh: str | None = None):
    """The run's model at checkpoint `step` (an `mbc_jax.models.Model` with the run's tokenizer).

    Exported with `mbc_jax.train.export_run` into `cache_dir/<run folder>_step<N>` (kept, and reused
    by later experiments) or into a temporary folder removed afterwards.
    """
    from mbc_jax.models import load_model
    from mbc_jax.sharding import make_mesh
    from mbc_jax.train import export_run

    tmp = None
    if cache_dir is not None:
        folder = Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', str(run.path.resolve())).strip('_')}_step{step}"
    else:
        tmp = tempfile.mkdtemp(prefix="mbc-exp-")
        folder = Path(tmp) / "model"
    try:
        ckpt = run.path / "checkpoints" / str(step)
        if folder.is_dir() and ckpt.is_dir() and ckpt.stat().st_mtime > folder.stat().st_mtime:
            shutil.rmtree(folder)  # the run was retrained since this export
        if not folder.is_dir():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            with warnings.catch_warnings():  # orbax: "sharding info not provided" (restored on one device)
                warnings.simplefilter("ignore", UserWarning)
                export_run(run.path, partial, step)
            partial.rename(folder)  # a folder under its final name is always complete
        yield load_model(str(folder), mesh=make_mesh(mesh))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- statistics


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) along the last axis, ties sharing their mean rank."""
    from scipy.stats import rankdata as _rank

    return _rank(x, axis=-1)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (nan when either side is constant)."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(-1) / np.where(den > 0, den, 1), np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return pearson(rankdata(x), rankdata(y))


def correlation(x: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                confidence: float = 0.95) -> dict[str, float]:
    """Pearson and Spearman correlations with percentile-bootstrap CIs (records resampled with
    replacement; resamples where a side is constant are left out of the interval)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    out = {"n": n}
    if n < 3:
        names = ("pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo", "spearman_hi")
        return out | {k: math.nan for k in names}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    alpha = (1 - confidence) / 2
    for name, fn in (("pearson", pearson), ("spearman", spearman)):
        out[name] = float(fn(x, y))
        boot = fn(x[idx], y[idx])
        boot = boot[np.isfinite(boot)]
        lo, hi = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (math.nan, math.nan)
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def balanced_order(categories: Sequence[str]) -> list[int]:
    """Positions ordered round-robin over categories (1st of each category, then 2nd, ...), each
    category in its given order: the first N positions are a category-balanced subset."""
    rank: dict[str, int] = {}
    keys = []
    for i, c in enumerate(categories):
        rank[c] = rank.get(c, 0) + 1
        keys.append((rank[c], i))
    return [i for _, i in sorted(keys)]


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


# ----------------------------------------------------------------------------- figures


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.0, 4.5)):
    """(Figure, flat list of axes) on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [a for row in axes for a in row]


def save_figure(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


def colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def category_colors(categories: Iterable[str]) -> dict[str, Any]:
    cats = sorted(set(map(str, categories)))
    return dict(zip(cats, colors(len(cats))))


# ----------------------------------------------------------------------------- outputs


@dataclasses.dataclass
class Artifact:
    """What one experiment wrote: the figure, its CSVs, the Markdown paragraph, key numbers."""

    name: str
    title: str
    png: Path | None
    csvs: list[Path]
    md: Path
    paragraph: str
    data: dict = dataclasses.field(default_factory=dict)


def write_markdown(out: Path, name: str, title: str, paragraph: str, png: Path | None,
                   csvs: Sequence[Path], extra: str = "") -> Path:
    """`<name>.md`: title, figure, the paragraph, optional extra Markdown (tables), the CSV names."""
    lines = [f"## {title}", ""]
    if png is not None:
        lines += [f"![{title}]({png.name})", ""]
    lines += [paragraph.strip(), ""]
    if extra:
        lines += [extra.strip(), ""]
    if csvs:
        lines += ["Numbers: " + ", ".join(f"[{p.name}]({p.name})" for p in csvs), ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def base_parser(prog: str, doc: str | None, runs: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{prog}",
                                description=(doc or "").strip().splitlines()[0] if doc else None)
    if runs:
        p.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="run folders of `mbc-jax train`")
        p.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                       help="one label per run (default: sampler and learning rate from config.yaml)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG, CSV and Markdown")
    return p


def log(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_cli(fn: Callable[[], Artifact]) -> int:
    """Run a module's main body and print what it wrote; the exit code as for `mbc-jax` (`mbc_jax.exit_code`)."""

    def body() -> int:
        art = fn()
        written = [p for p in (art.png, *art.csvs, art.md) if p is not None]
        print(f"{art.name}: wrote {', '.join(str(p) for p in written)}")
        print(art.paragraph)
        return 0

    return exit_code(body)
