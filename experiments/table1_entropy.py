"""Table 1: mean entropy of the output distribution at the first and last checkpoints, nucleus
sampling vs teacher forcing, both over the response.

    python -m experiments.table1_entropy --runs runs/demo/mbc runs/demo/uniform --out figures/ \
        [--max-records 64] [--max-new-tokens 256] [--split val]

- teacher forcing (`teacher_forcing_response_entropy`): the `response_entropy` column of the
  snapshot's rows of the split: per record, the mean entropy of the model's full predictive
  distribution at the reference response's targets (its EOS target included), written by the
  trainer. The full-dialogue `entropy` column (instruction, context and template too: positions
  `loss_on: response` never trains) is kept as a labelled extra column,
  `teacher_forcing_dialogue_entropy`.
- nucleus sampling: the run's checkpoint is exported (`mbc_jax.checkpoints.export_run`) and answers the
  same records' prompts with the paper's settings (top-p 0.9, temperature 0.7, repetition penalty
  1.2), through `mbc_jax.generate.answer_records` as `mbc-jax generate` does. Two readings at every
  generated token (`mbc_jax.generate.decode`), per record averaged over its generated tokens (the
  EOS step included):
  `nucleus_entropy`: the model's full softmax (temperature 1, before any processing);
  `nucleus_sampling_entropy`: the truncated distribution the token was actually drawn from (after
  the repetition penalty, temperature and top-p, renormalized).
  The paper does not state which of the two its Table 1 reports (nor which positions its
  teacher-forcing number averages), so both are shown, labelled.

Every entropy is a per-record mean: the mean over records of each record's mean over its tokens
(not token-weighted), records without a response target left out of the teacher-forcing ones. The
teacher-forcing numbers are given over the records that were sampled (the comparable ones) and, for
the response, over the whole split. The sampled answers are kept in `table1_entropy_generations/` in
the format of `mbc-jax generate` (the input of `mbc-jax judge`). "First" is the first checkpoint
after training began (or `--first-step`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax import generate as g
from mbc_jax.answers_file import write_answers
from mbc_jax.run_folder import MEMORIZATION, RunFolder, snapshot_name

NAME = "table1_entropy"
TITLE = "Table 1: entropy of the output distribution, nucleus sampling vs teacher forcing"
COLUMNS = ("run", "checkpoint", "step", "records", "nucleus_entropy", "nucleus_sampling_entropy", "mean_new_tokens",
           "stopped_eos", "teacher_forcing_response_entropy", "teacher_forcing_records",
           "teacher_forcing_response_entropy_all", "teacher_forcing_records_all", "teacher_forcing_dialogue_entropy",
           "generations")
# (column, label) of the four readings, in the order the table, the figure and the paragraph give them
READINGS = (("nucleus_entropy", "nucleus, full softmax (T = 1, unprocessed)"),
            ("nucleus_sampling_entropy", "nucleus, distribution sampled (penalty, T, top-p)"),
            ("teacher_forcing_response_entropy", "teacher forcing, response"),
            ("teacher_forcing_dialogue_entropy", "teacher forcing, full dialogue (extra)"))
PAPER = "its Table 1, first -> last checkpoint: nucleus 0.3610 -> 0.1670, teacher forcing 0.7675 -> 0.3638"


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


def require_entropy_columns(run: RunFolder, step: int, split: str) -> dict[str, np.ndarray]:
    """The snapshot's `split` rows at `step`; a UserError naming the file when it lacks an entropy column."""
    t = run.memorization(step, split)
    for column in ("response_entropy", "entropy"):
        if column not in t:
            raise common.UserError(
                f"{run.path / MEMORIZATION / snapshot_name(step)}: no {column!r} column (the snapshot was written by "
                "an older mbc-jax); Table 1 compares the response-only teacher-forcing entropy: train the run again "
                "with this version")
    return t


def teacher_forcing(run: RunFolder, step: int, split: str, indices: Sequence[int]) -> dict:
    """The teacher-forcing columns at `step` from the snapshot's `split` rows: per-record means of
    `response_entropy` over the records in `indices` and over the whole split (records without a
    response target left out), with their counts, and of `entropy` (full dialogue) over `indices`."""
    t = require_entropy_columns(run, step, split)
    resp, full = t["response_entropy"].astype(float), t["entropy"].astype(float)
    sel = np.isin(t["index"], np.asarray(indices))
    ok = np.isfinite(resp)
    return {"teacher_forcing_response_entropy": float(resp[sel & ok].mean()) if (sel & ok).any() else float("nan"),
            "teacher_forcing_records": int((sel & ok).sum()),
            "teacher_forcing_response_entropy_all": float(resp[ok].mean()) if ok.any() else float("nan"),
            "teacher_forcing_records_all": int(ok.sum()),
            "teacher_forcing_dialogue_entropy": float(full[sel].mean())}


def measure(run: RunFolder, out: Path, *, split: str = "val", max_records: int | None = 64,
            max_new_tokens: int = g.DEFAULT_MAX_NEW_TOKENS, first_step: int | None = None, seed: int = 0,
            batch_size: int = 32, cache_dir: str | Path | None = None, mesh: str | None = None,
            sampling: dict | None = None, log=common.log) -> list[dict]:
    cfg = sampling_config(max_new_tokens, **(sampling or {}))
    if not (run.records["split"] == split).any():
        raise common.UserError(f"{run.path / 'records.csv'}: no {split!r} records to generate for (use --split train)")
    records = select_records(run, split, max_records)
    gen_dir = out / f"{NAME}_generations"
    gen_dir.mkdir(parents=True, exist_ok=True)
    steps = run.first_last_checkpoints(first_step, log)
    for step in steps.values():  # before any generation: the snapshots hold what the table compares
        require_entropy_columns(run, step, split)
    rows = []
    for which, step in steps.items():
        t0 = time.perf_counter()
        with (common.checkpoint_model(run, step, cache_dir, mesh) as model,
              g.AnswerProgress(len(records), f"{NAME}: {run.label} step {step}") as bar):
            answers = g.answer_records(model, records, cfg, run.template(), seed=seed, batch_size=batch_size,
                                       on_batch=bar)
        path = gen_dir / f"{run.slug}_step{step}.jsonl"
        write_answers(path, answers.rows)
        tf = teacher_forcing(run, step, split, [a["index"] for a in answers.rows])
        summary = answers.summary
        rows.append({"run": run.label, "checkpoint": which, "step": step, "records": summary["records"],
                     "nucleus_entropy": summary["mean_entropy"],
                     "nucleus_sampling_entropy": summary["mean_sampling_entropy"],
                     "mean_new_tokens": summary["mean_tokens"], "stopped_eos": summary["stopped_eos"],
                     **tf, "generations": str(path)})
        log(f"{NAME}: {run.label} step {step}: {summary['records']} {split} records, nucleus entropy "
            f"{summary['mean_entropy']:.3f} (full softmax) / {summary['mean_sampling_entropy']:.3f} (sampled), "
            f"teacher forcing {tf['teacher_forcing_response_entropy']:.3f} (response) "
            f"({time.perf_counter() - t0:.0f}s)")
    return rows


def describe(rows: list[dict], split: str, cfg) -> str:
    parts = [f"Entropies in nats over {rows[0]['records']} {split} records per checkpoint ({cfg.describe()}); each "
             "is the mean over records of the record's mean over its tokens. Teacher forcing is read at the "
             "reference response's targets and nucleus sampling along the generated response (EOS included in "
             "both), so both cover the response alone. Nucleus sampling is given twice: the entropy of the "
             "model's full softmax (temperature 1, before any processing) and that of the truncated distribution "
             "actually sampled (after the repetition penalty, temperature and top-p); the paper does not state which "
             "it reports (" + PAPER + "). The full-dialogue teacher-forcing entropy (instruction and template "
             "too) is an extra column."]
    lower = {"nucleus_entropy": 0, "nucleus_sampling_entropy": 0}
    for run in dict.fromkeys(r["run"] for r in rows):
        f, last = [next(r for r in rows if r["run"] == run and r["checkpoint"] == w) for w in common.FIRST_LAST]
        change = {key: f"{fmt(f[key])} -> {fmt(last[key])} ({last[key] - f[key]:+.3f})" for key, _ in READINGS}
        parts.append(f"{run}, from the first checkpoint (step {f['step']}) to the last (step {last['step']}): nucleus "
                     f"{change['nucleus_entropy']} (full softmax) and {change['nucleus_sampling_entropy']} "
                     f"(distribution sampled); teacher forcing on the response "
                     f"{change['teacher_forcing_response_entropy']} (full dialogue "
                     f"{change['teacher_forcing_dialogue_entropy']}).")
        for key in lower:
            lower[key] += sum(r[key] < r["teacher_forcing_response_entropy"] for r in (f, last))
    n = len(rows)
    parts.append(f"Nucleus-sampling entropy is below the response's teacher-forcing entropy in "
                 f"{lower['nucleus_entropy']} of {n} cases read on the full softmax and in "
                 f"{lower['nucleus_sampling_entropy']} of {n} read on the distribution sampled (the paper: below).")
    return " ".join(parts)


def plot(rows: list[dict], path: Path) -> Path:
    fig, (ax,) = common.figure(size=(max(6.5, 1.6 * len(rows) + 2), 4.5))
    x = np.arange(len(rows))
    colors = ("#6BAED6", "#08519C", "#E6550D", "#FDD0A2")
    for k, ((key, label), color) in enumerate(zip(READINGS, colors)):
        ax.bar(x + (k - 1.5) * 0.2, [r[key] for r in rows], 0.2, color=color, label=label,
               hatch="//" if key == "teacher_forcing_dialogue_entropy" else None, edgecolor="white")
    ax.set_xticks(x, [f"{r['run']}\n{r['checkpoint']} (step {r['step']})" for r in rows], fontsize=8)
    ax.set_ylabel("mean entropy (nats; per-record mean)")
    ax.set_title("Table 1: nucleus sampling vs teacher forcing on the response", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    top = max((r[key] for r in rows for key, _ in READINGS if np.isfinite(r[key])), default=1.0)
    ax.set_ylim(0, 1.3 * top)  # headroom for the legend above the bars
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    return common.save_figure(fig, path)


def build(runs: Sequence[RunFolder], out: str | Path, *, split: str = "val", max_records: int | None = 64,
          max_new_tokens: int = g.DEFAULT_MAX_NEW_TOKENS, first_step: int | None = None, seed: int = 0,
          batch_size: int = 32, cache_dir: str | Path | None = None, mesh: str | None = None,
          sampling: dict | None = None) -> Artifact:
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
        [[r["run"], r["checkpoint"], r["step"], *(fmt(r[key]) for key, _ in READINGS),
          fmt(r["teacher_forcing_response_entropy_all"]), r["records"], fmt(r["mean_new_tokens"], 1)] for r in rows],
        ["run", "checkpoint", "step", *(label for _, label in READINGS), "teacher forcing, response (whole split)",
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
