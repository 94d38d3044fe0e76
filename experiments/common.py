"""Shared helpers of the experiment modules: read run folders, write CSV / Markdown, draw PNGs.

Every experiment reads only what `mbc-jax train` wrote (docs/run_folder.md), through
`mbc_jax.run_folder.RunFolder`, the one reader of that format:

    run = RunFolder.open("runs/demo/mbc")
    run.memorization_steps()                  # [0, 75, 150, ...]
    table = run.memorization(150, "train")    # {column: numpy array}, one entry per record
    steps, index, em = run.record_matrix("exact_match")   # [checkpoints, records]
    pooled_exact_match(table)                 # Eq. 1: matched targets / targets, over all records

and writes, into `--out`, `<name>.png`, `<name>.csv` (the numbers behind the figure) and
`<name>.md` (the figure, and a paragraph whose numbers come from the data). Figures are drawn on
matplotlib `Figure` objects with the Agg canvas: no pyplot, no global state, no display needed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbc_jax import UserError, exit_code
from mbc_jax.formatting import fmt, fmt_lr  # noqa: F401 (the experiment modules use them from here)
from mbc_jax.run_folder import RunFolder, read_csv, weight_sources, write_csv  # noqa: F401 (as fmt)

FIRST_LAST = ("first", "last")


def record_text(record: Any, template: Any = None, limit: int | None = 240) -> str:
    """One line of a record's text (prompt and response) for tables; `limit` characters at most."""
    if record.text is not None:
        text = record.text
    elif record.turns and getattr(template, "chat", False):  # a chat template needs the tokenizer: the turns, plainly
        text = " ".join(f"{role}: {content}" for role, content in record.turns)
        text += f" context: {record.context}" if record.context else ""
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

    `step` is any step with weights (`run.checkpoint_steps()`: param snapshots and full checkpoints; another
    is a UserError listing them). Exported with `mbc_jax.checkpoints.export_run` into
    `cache_dir/<run folder>_step<N>` (kept, and reused by later experiments) or into a temporary folder
    removed afterwards.
    """
    from mbc_jax.checkpoints import export_run
    from mbc_jax.models import load_model
    from mbc_jax.sharding import make_mesh

    tmp = None
    if cache_dir is not None:
        folder = Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9.+-]+', '_', str(run.path.resolve())).strip('_')}_step{step}"
    else:
        tmp = tempfile.mkdtemp(prefix="mbc-exp-")
        folder = Path(tmp) / "model"
    try:
        ckpt = weight_sources(run.path).get(step)  # the full checkpoint, else the param snapshot: what export reads
        if folder.is_dir() and ckpt is not None and ckpt.stat().st_mtime > folder.stat().st_mtime:
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


LOSS_ON = {"response": "response only", "full": "full dialogue"}


def trained_positions(run: RunFolder) -> str:
    """`loss_on` from the run's saved config.yaml: "response" (the loss covered response targets only)
    or "full" (the whole dialogue). A figure that headlines "the positions that were trained" reads it here."""
    value = run.config.get("loss_on")
    if value not in LOSS_ON:
        raise UserError(f"{run.path / 'config.yaml'}: loss_on is {value!r}, expected one of {', '.join(LOSS_ON)}; "
                        "the figure needs to know which positions were trained (rerun `mbc-jax train`, which "
                        "writes every key)")
    return str(value)


def pooled_exact_match(table: dict[str, np.ndarray], response: bool = False) -> float:
    """Exact memorization as the paper's Eq. 1 over a snapshot table's records: matched targets
    summed over the records / their targets summed (long records weigh more); nan when there are none.

    The matched count of a record is `exact_match * tokens` (`response_exact_match * response_tokens`),
    its count up to float rounding; records without such targets (empty cell, 0 tokens) add nothing."""
    prefix = "response_" if response else ""
    ratio = np.asarray(table[f"{prefix}exact_match"], np.float64)
    n = np.asarray(table[f"{prefix}tokens"], np.float64)
    ok = np.isfinite(ratio) & (n > 0)
    total = n[ok].sum()
    return float((ratio[ok] * n[ok]).sum() / total) if total > 0 else math.nan


def macro_exact_match(table: dict[str, np.ndarray], response: bool = False) -> float:
    """The per-record (macro) mean of `exact_match` (`response_exact_match`), records without such
    targets left out; nan when there are none. Every record weighs the same."""
    ratio = np.asarray(table["response_exact_match" if response else "exact_match"], np.float64)
    ratio = ratio[np.isfinite(ratio)]
    return float(ratio.mean()) if len(ratio) else math.nan


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


def mean_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
            confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the finite values and its percentile-bootstrap interval (values
    resampled with replacement); nan when there are none, (mean, mean, mean) for one value."""
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return math.nan, math.nan, math.nan
    boot = x[np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))].mean(-1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(x.mean()), float(lo), float(hi)


def balanced_order(categories: Sequence[str]) -> list[int]:
    """Positions ordered round-robin over categories (1st of each category, then 2nd, ...), each
    category in its given order: the first N positions are a category-balanced subset."""
    rank: dict[str, int] = {}
    keys = []
    for i, c in enumerate(categories):
        rank[c] = rank.get(c, 0) + 1
        keys.append((rank[c], i))
    return [i for _, i in sorted(keys)]


def by_run_and_step(records: Sequence[dict]) -> Iterator[tuple[str, int, list[dict], dict[Any, dict]]]:
    """Per-record rows (keys run, step, index) by run and step: (run, step, the run's rows at that step,
    the run's step-0 rows by index, empty without step 0); runs in first-seen order, steps ascending."""
    for run in dict.fromkeys(r["run"] for r in records):
        mine = [r for r in records if r["run"] == run]
        base = {r["index"]: r for r in mine if r["step"] == 0}
        for step in sorted({r["step"] for r in mine}):
            yield run, step, [r for r in mine if r["step"] == step], base


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


# ----------------------------------------------------------------------------- figures


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.0, 4.5),
           width_ratios: Sequence[float] | None = None, sharey: bool | str = False):
    """(Figure, flat list of axes, row by row) on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, width_ratios=width_ratios, sharey=sharey)
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
