"""Table 1: mean entropy of the output distribution at the first and last checkpoints, nucleus
sampling vs teacher forcing.

    python -m experiments.table1_entropy --runs runs/demo/mbc runs/demo/uniform --out figures/ \
        [--max-records 64] [--max-new-tokens 256] [--split val]

- teacher forcing: the `entropy` column of the snapshot's validation rows (mean entropy of the
  full predictive distribution along the reference response; written by the trainer);
- nucleus sampling: the run's checkpoint is exported (`mbc_jax.checkpoints.export_run`) and answers the
  same records' prompts with the paper's settings (top-p 0.9, temperature 0.7, repetition penalty
  1.2), through `mbc_jax.generate.answer_records` as `mbc-jax generate` does; entropy of the full
  predictive distribution (temperature 1, before any processing) along the sampled continuation,
  averaged over its tokens.

Both are averaged over records (each record's mean first). The teacher-forcing number is given over
the records that were sampled (the comparable one) and over the whole split. The sampled answers
are kept in `table1_entropy_generations/` in the format of `mbc-jax generate` (the input of
`mbc-jax judge`). "First" is the first checkpoint after training began (or `--first-step`), among
those still saved.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax import generate as g
from mbc_jax.run_folder import RunFolder

NAME = "table1_entropy"
TITLE = "Table 1: entropy of the output distribution, nucleus sampling vs teacher forcing"
COLUMNS = ("run", "checkpoint", "step", "records", "nucleus_entropy", "nucleus_sampling_entropy", "mean_new_tokens",
           "stopped_eos", "teacher_forcing_entropy", "teacher_forcing_entropy_all", "teacher_forcing_records_all",
           "generations")


def sampling_config(max_new_tokens: int, temperature: float | None = None, top_p: float | None = None,
                    repetition_penalty: float | None = None) -> g.SamplingConfig:
    return g.SamplingConfig(
        temperature=g.DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=g.DEFAULT_TOP_P if top_p is None else top_p,
        repetition_penalty=g.DEFAULT_REPETITION_PENALTY if repetition_penalty is None else repetition_penalty,
        max_new_tokens=max_new_tokens).validate()


def select_records(run: RunFolder, split: str, max_records: int | None) -> list:
    """The split's Records, category-balanced first `max_records` (records.csv order within a category)."""
    records = run.load_records(split)
    order = common.balanced_order([r.category for r in records])
    chosen = sorted(order[:max_records] if max_records else order)
    return [records[i] for i in chosen]


def teacher_forcing(run: RunFolder, step: int, split: str, indices: Sequence[int]) -> tuple[float, float, int]:
    """(mean entropy over `indices`, mean over the whole split, records in the split) at `step`."""
    t = run.memorization(step, split)
    ent = t["entropy"].astype(float)
    m = np.isin(t["index"], np.asarray(indices))
    ok = np.isfinite(ent)
    return float(ent[m & ok].mean()), float(ent[ok].mean()), int(ok.sum())


def measure(run: RunFolder, out: Path, *, split: str = "val", max_records: int | None = 64,
            max_new_tokens: int = 256, first_step: int | None = None, seed: int = 0, batch_size: int = 32,
            cache_dir: str | Path | None = None, mesh: str | None = None, sampling: dict | None = None,
            log=common.log) -> list[dict]:
    cfg = sampling_config(max_new_tokens, **(sampling or {}))
    if not (run.records["split"] == split).any():
        raise common.UserError(f"{run.path / 'records.csv'}: no {split!r} records to generate for (use --split train)")
    records = select_records(run, split, max_records)
    gen_dir = out / f"{NAME}_generations"
    gen_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for which, step in run.first_last_checkpoints(first_step, log).items():
        t0 = time.perf_counter()
        with common.checkpoint_model(run, step, cache_dir, mesh) as model:
            answers = g.answer_records(model, records, cfg, run.template(), seed=seed, batch_size=batch_size)
        path = gen_dir / f"{run.slug}_step{step}.jsonl"
        path.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers.rows))
        tf, tf_all, n_all = teacher_forcing(run, step, split, [a["index"] for a in answers.rows])
        summary = answers.summary
        rows.append({"run": run.label, "checkpoint": which, "step": step, "records": summary["records"],
                     "nucleus_entropy": summary["mean_entropy"],
                     "nucleus_sampling_entropy": summary["mean_sampling_entropy"],
                     "mean_new_tokens": summary["mean_tokens"], "stopped_eos": summary["stopped_eos"],
                     "teacher_forcing_entropy": tf, "teacher_forcing_entropy_all": tf_all,
                     "teacher_forcing_records_all": n_all, "generations": str(path)})
        log(f"{NAME}: {run.label} step {step}: {summary['records']} {split} records, nucleus entropy "
            f"{summary['mean_entropy']:.3f}, teacher forcing {tf:.3f} ({time.perf_counter() - t0:.0f}s)")
    return rows


def describe(rows: list[dict], split: str, cfg) -> str:
    parts = [f"Entropies in nats, mean over {rows[0]['records']} {split} records per checkpoint "
             f"({cfg.describe()})."]
    lower = 0
    for run in dict.fromkeys(r["run"] for r in rows):
        f, last = [next(r for r in rows if r["run"] == run and r["checkpoint"] == w) for w in common.FIRST_LAST]
        parts.append(
            f"{run}: at the first checkpoint (step {f['step']}) nucleus sampling gives {fmt(f['nucleus_entropy'])} "
            f"against {fmt(f['teacher_forcing_entropy'])} under teacher forcing; at the last (step {last['step']}) "
            f"{fmt(last['nucleus_entropy'])} against {fmt(last['teacher_forcing_entropy'])} (nucleus "
            f"{last['nucleus_entropy'] - f['nucleus_entropy']:+.3f}, teacher forcing "
            f"{last['teacher_forcing_entropy'] - f['teacher_forcing_entropy']:+.3f} from first to last).")
        lower += sum(r["nucleus_entropy"] < r["teacher_forcing_entropy"] for r in (f, last))
    n = len(rows)
    verdict = ("the model is more certain along its own sampled continuation than along the reference"
               if 2 * lower > n else "the model is less certain along its own sampled continuation than along "
               "the reference" if 2 * lower < n else "neither is consistently lower")
    parts.append(f"Nucleus-sampling entropy is below teacher-forcing entropy in {lower} of {n} cases: {verdict}.")
    return " ".join(parts)


def plot(rows: list[dict], path: Path) -> Path:
    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig, (ax,) = common.figure(size=(max(6.0, 2.2 * len(runs) + 2), 4.3))
    x = np.arange(len(runs))
    bars = (("first", "nucleus_entropy", "#9ECAE1", "nucleus, first"),
            ("last", "nucleus_entropy", "#08519C", "nucleus, last"),
            ("first", "teacher_forcing_entropy", "#FDAE6B", "teacher forcing, first"),
            ("last", "teacher_forcing_entropy", "#D94801", "teacher forcing, last"))
    for k, (which, key, color, label) in enumerate(bars):
        vals = [next(r[key] for r in rows if r["run"] == run and r["checkpoint"] == which) for run in runs]
        ax.bar(x + (k - 1.5) * 0.2, vals, 0.2, color=color, label=label)
    ax.set_xticks(x, runs, fontsize=8)
    ax.set_ylabel("mean entropy (nats)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path, *, split: str = "val", max_records: int | None = 64,
          max_new_tokens: int = 256, first_step: int | None = None, seed: int = 0, batch_size: int = 32,
          cache_dir: str | Path | None = None, mesh: str | None = None, sampling: dict | None = None) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for run in runs for r in measure(run, out, split=split, max_records=max_records,
                                               max_new_tokens=max_new_tokens, first_step=first_step, seed=seed,
                                               batch_size=batch_size, cache_dir=cache_dir, sampling=sampling,
                                               mesh=mesh)]
    csv_path = common.write_csv(out / f"{NAME}.csv", rows, COLUMNS)
    png = plot(rows, out / f"{NAME}.png")
    paragraph = describe(rows, split, sampling_config(max_new_tokens, **(sampling or {})))
    table = common.markdown_table(
        [[r["run"], r["checkpoint"], r["step"], fmt(r["nucleus_entropy"]), fmt(r["teacher_forcing_entropy"]),
          fmt(r["teacher_forcing_entropy_all"]), r["records"], fmt(r["mean_new_tokens"], 1)] for r in rows],
        ["run", "checkpoint", "step", "nucleus sampling", "teacher forcing", "teacher forcing (whole split)",
         "records", "mean new tokens"])
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path], extra=table)
    return Artifact(NAME, TITLE, png, [csv_path], md, paragraph, {"rows": rows, "table": table})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--split", default="val", choices=("val", "train"), help="records to generate for (default: val)")
    p.add_argument("--max-records", type=int, default=64, metavar="N",
                   help="records per checkpoint, category-balanced; 0 = all (default: 64)")
    p.add_argument("--max-new-tokens", type=int, default=g.DEFAULT_MAX_NEW_TOKENS, metavar="N",
                   help=f"new tokens per answer at most (default: {g.DEFAULT_MAX_NEW_TOKENS}, the paper's)")
    p.add_argument("--first-step", type=int, default=None, metavar="STEP",
                   help="checkpoint used as the first (default: the first saved after step 0)")
    p.add_argument("--temperature", type=float, default=None, help=f"default {g.DEFAULT_TEMPERATURE}")
    p.add_argument("--top-p", type=float, default=None, help=f"default {g.DEFAULT_TOP_P}")
    p.add_argument("--repetition-penalty", type=float, default=None, help=f"default {g.DEFAULT_REPETITION_PENALTY}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="rows per decoding batch (default: 32)")
    p.add_argument("--export-cache", default=None, metavar="DIR",
                   help="keep exported checkpoints here for reuse (default: a temporary folder)")
    p.add_argument("--mesh", default=None, metavar="D,F,T", help="device mesh for the model (default: all on data)")
    args = p.parse_args(argv)
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "repetition_penalty": args.repetition_penalty}
    return common.run_cli(lambda: build(
        common.open_runs(args.runs, args.labels), args.out, split=args.split, max_records=args.max_records or None,
        max_new_tokens=args.max_new_tokens, first_step=args.first_step, seed=args.seed, batch_size=args.batch_size,
        cache_dir=args.export_cache, sampling=sampling))


if __name__ == "__main__":
    sys.exit(main())
