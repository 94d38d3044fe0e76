"""`mbc-jax train`, `mbc-jax export` and `mbc-jax demo` (an MBC and a uniform run on the generated demo data)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mbc_jax.commands.common import add_mesh_arg


def register(sub) -> None:
    p = sub.add_parser("train", help="SFT with uniform or MBC sampling; resumes an existing run folder")
    p.add_argument("--config", default=None, help="YAML config (see experiments/configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sampler=uniform mbc.k=50")
    p.add_argument("--override", action="store_true", help="continue a run folder made with a different config")
    add_mesh_arg(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("export", help="write a Hugging Face checkpoint folder of a run's weights at a step")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--step", type=int, default=None,
                   help="any checkpoint step with a param snapshot or a full checkpoint (default: the latest); "
                        "the full checkpoint's float32 weights where both exist")
    p.add_argument("--out", required=True, help="output folder (refused if it exists and is not empty)")
    p.add_argument("--force", action="store_true", help="write into --out even if it holds files")
    p.set_defaults(func=run_export)

    p = sub.add_parser("demo", help="the demo: an MBC and a uniform SFT run on generated data, compared")
    p.add_argument("--out", default="runs/demo", help="parent folder of the two run folders")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both runs")
    p.set_defaults(func=run_demo)


def run_train(args: argparse.Namespace) -> int:
    from mbc_jax import config as config_lib
    from mbc_jax.assemble import create_trainer

    overrides = list(args.overrides) + ([f"mesh={args.mesh}"] if args.mesh else [])
    cfg = config_lib.load(args.config, overrides)
    summary = create_trainer(cfg, override=args.override).train()
    print(json.dumps(summary, indent=2))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from mbc_jax import UserError
    from mbc_jax.checkpoints import export_run
    from mbc_jax.paths import as_path

    out = as_path(args.out)
    if not args.force and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not empty; choose a new folder, or pass --force to write "
                        f"into it (files of the same names are replaced)")

    out, step = export_run(args.run, args.out, args.step)
    print(f"exported step {step} of {args.run} -> {out}")
    return 0


DEMO_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "demo.yaml"


def run_demo(args: argparse.Namespace) -> int:
    from mbc_jax import config as config_lib
    from mbc_jax.assemble import create_trainer
    from mbc_jax.paths import as_path

    summaries = {}
    for sampler in ("mbc", "uniform"):
        cfg = config_lib.load(str(DEMO_CONFIG) if DEMO_CONFIG.is_file() else None,
                              [f"out={as_path(args.out) / sampler}", f"sampler={sampler}", *args.overrides])
        print(f"=== {sampler} run -> {cfg.out}")
        summaries[sampler] = create_trainer(cfg).train()
    print(compare(summaries))
    print(demo_claims(as_path(args.out) / "uniform", as_path(args.out) / "mbc"))
    return 0


def demo_claims(run_dir, mbc_dir=None) -> str:
    """The claims check in short, on the demo's uniform run (and its MBC run, `mbc_dir`, for Figs. 6 and 8 and
    the membership row): the findings its run folders and data map (written to `<run_dir>/../figures/`) can
    test; `reproduce --scale tiny` measures the rest."""
    from experiments import claims, fig2_data_map
    from mbc_jax.run_folder import RunFolder

    run = RunFolder.open(run_dir)
    figs = run_dir.parent / "figures"
    fig2_data_map.build([run], figs)
    mbc = [RunFolder.open(mbc_dir)] if mbc_dir is not None and (mbc_dir / "config.yaml").is_file() else []
    rows = claims.evaluate([run], figs, [], "the demo does not judge", mbc=mbc)
    lines = ["", "claims check, in short (the demo's runs; `python -m experiments.reproduce --scale tiny` tests all of "
             "them, with MBC, generation, the judge and Zeng's analyses); verdicts: "
             f"{claims.VERDICT_WORDS.replace('**', '')}"]
    for r in rows:
        if r.verdict == claims.UNMEASURED:
            continue
        why = f"; {r.why}" if r.why else ""
        lines.append(f"- {r.verdict}: {r.finding}: {'; '.join(r.values)} (rule: {r.rule}{why})")
    lines.append(f"- not measured here: {', '.join(r.finding for r in rows if r.verdict == claims.UNMEASURED)}")
    return "\n".join(lines)


def compare(summaries: dict[str, dict]) -> str:
    from mbc_jax.commands.common import fmt, table

    keys = [("train_exact_match", "train exact match (Eq. 1, pooled)"),
            ("train_response_exact_match", "train response exact match (pooled)"),
            ("train_exact_match_macro", "train exact match (per-record mean)"),
            ("train_response_exact_match_macro", "train response exact match (per-record mean)"),
            ("train_response_exact_match_no_eos", "train response exact match without EOS (pooled)"),
            ("train_perplexity", "train perplexity"), ("val_perplexity", "val perplexity"),
            ("val_entropy", "val entropy (teacher forcing)"),
            ("val_response_entropy", "val response entropy (teacher forcing)")]
    rows = [[label, *(fmt(s["final"].get(k)) for s in summaries.values())] for k, label in keys]
    rows.append(["distinct records drawn", *(str(s["distinct_records_drawn"]) for s in summaries.values())])
    rows.append(["wall-clock (s)", *(f"{s['wall_seconds']:.0f}" for s in summaries.values())])
    lines = [table(rows, ["", *summaries]), ""]
    for name, s in summaries.items():
        lines.append(f"{name}: run folder {s['run']} (memorization/, metrics.jsonl, sampling.csv, summary.json)")
    return "\n".join(lines)
