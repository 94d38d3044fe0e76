"""Wall-clock of MBC training over a uniform baseline of the same steps: prints one JSON line.

    python benchmarks/mbc_overhead.py [--workload demo|dolly] [--epochs 15] [--layers L --hidden H --heads N]
        [--modes full,incremental] [--fractions 0.1] [--repeats 1] [--records R] [--set key=value ...]

Runs the real trainer (`mbc_jax.train.Trainer`, configs from `mbc_jax.config.load`) once with the
uniform sampler and once per MBC mode, all with the same steps, k = N / batch (one re-score per
epoch-equivalent), memorization tracking off and a single checkpoint interval, so only the sampler
(and the scoring it triggers) differs. Each run has its own temporary run folder, deleted after.
With `--repeats` > 1 the runs alternate (baseline first, then reversed order, ...) and the min per
configuration is kept: on a shared machine only ratios from one process mean anything.

Workloads:
- `demo` (default): `experiments/configs/demo.yaml`, the README's demo run (600 generated
  records, tiny GPT-Neo, batch 8, 15 epochs); `--layers/--hidden/--heads` swap in a bigger GPT-Neo
  (same tokenizer).
- `dolly`: the shared benchmark records (`../shared/bench/dolly256_gptneo.jsonl`, pre-tokenized,
  max_length 512) on a random gpt-neo-125M shape trimmed to `--layers` (default 2) layers.

Per MBC run it reports: wall seconds, ratio to the baseline, seconds inside scoring (refreshes),
the scorer's compile seconds, tokens scored and trained, and the FLOP floor of the ratio,
1 + scored tokens / (3 x trained tokens) (one forward per scored token against forward + backward
per trained token), on real tokens and on the padded tokens the packed batches actually compute.
MBC draws with replacement and favours high-perplexity records, which are often the long ones, so
its batches can hold more tokens than the baseline's over the same steps: `train_work_vs_baseline`
is its trained (padded) positions over the baseline's, `ratio_per_trained_position` divides
the wall-clock ratio by it (the cost of the sampler and its scoring per position trained), and
`flop_floor_vs_baseline` is the FLOP floor of the raw ratio once that extra work is counted
(train_work_vs_baseline x flop_floor_padded), and `ratio_over_floor` the raw ratio over it (the
targets allow 1.40 / 1.333 = 1.05 for a full re-score and 1.10 / 1.033 = 1.065 for incremental 0.1
over their equal-work floors). `score_vs_train_forward_per_token` is what the
1.40 target asks of the scorer: its seconds per scored real token (compile excluded) over a third
of the baseline's train seconds per trained real token (1.0: as cheap as a training forward).
After training it re-scores every record with the final parameters and reports the Spearman rank
correlation of the sampler's stored perplexities, and of its sampling weights, with the fresh ones
(plus the total-variation distance of the two weight vectors): how stale the weights have become.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_throughput import SHARED, bench_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "experiments" / "configs" / "demo.yaml"
DOLLY = SHARED / "bench" / "dolly256_gptneo.jsonl"


def model_folder(tmp: Path, workload: str, args) -> str:
    """'demo', or a folder with a config.json (and the demo tokenizer) for a bigger shape."""
    if workload == "demo":
        if not (args.layers or args.hidden or args.heads):
            return "demo"
        from mbc_jax.demo import materialize

        paths = materialize(tmp / "demo", seed=0)
        folder = tmp / "model"
        shutil.copytree(paths["model"], folder)
        cfg = json.loads((folder / "config.json").read_text())
    else:
        folder = tmp / "model"
        folder.mkdir()
        cfg = bench_config(args.layers or 2)
    layers = args.layers or cfg["num_layers"]
    cfg.update(num_layers=layers, attention_types=[[["global", "local"], layers // 2]],
               attention_layers=["global", "local"] * (layers // 2))
    if args.hidden:
        cfg["hidden_size"] = args.hidden
    if args.heads:
        cfg["num_heads"] = args.heads
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(folder)


def base_overrides(tmp: Path, args) -> tuple[str | None, list[str]]:
    model = model_folder(tmp, args.workload, args)
    common = [f"epochs={args.epochs}", "track_memorization=false", "checkpoint_every=1000000000",
              "keep_checkpoints=1", "log_every=1000000", "mbc.k=0", f"model={model}"]
    if args.workload == "demo":
        return str(DEMO_CONFIG), common + list(args.set)
    data = DOLLY
    if args.records:
        data = tmp / "dolly.jsonl"
        data.write_text("".join(DOLLY.read_text().splitlines(keepends=True)[: args.records]))
    return None, common + [f"data={data}", "schema=tokens", "max_length=512", "loss_on=response", "batch_size=8",
                           "learning_rate=5e-4", "init=random"] + list(args.set)


def one_run(name: str, tmp: Path, config: str | None, overrides: list[str], correlate: bool) -> dict:
    from mbc_jax import config as config_lib
    from mbc_jax.assemble import create_trainer
    from mbc_jax.samplers import MBCSampler, mbc_weights, record_perplexity

    out = tmp / name
    cfg = config_lib.load(config, overrides + [f"out={out}"])
    trainer = create_trainer(cfg, log=lambda *a, **k: None)
    summary = trainer.train()
    tokens = summary["tokens"]  # the trainer's own counts of trained and MBC-scored positions
    res = {"run": name, "wall_seconds": summary["wall_seconds"], "train_seconds": summary["train_seconds"],
           "score_seconds": summary["score_seconds"], "checkpoint_seconds": summary["checkpoint_seconds"],
           "steps": trainer.total_steps, "k": trainer.mbc_k, "train_records": len(trainer.data.train),
           "trained_real_tokens": tokens["trained_real"], "trained_padded_tokens": tokens["trained_padded"],
           "refreshes": summary["mbc_refreshes"], "scored_real_tokens": tokens["mbc_scored_real"],
           "scored_padded_tokens": tokens["mbc_scored_padded"],
           "score_compile_seconds": summary["score_compile_seconds"],
           "distinct_records_drawn": summary["distinct_records_drawn"]}
    sampler = trainer.sampler
    if correlate and isinstance(sampler, MBCSampler):
        from scipy.stats import spearmanr

        fresh_scores = trainer.scorer(trainer.params, trainer.data.train, trainer.train_batches)  # after training
        fresh = record_perplexity(fresh_scores, sampler.response)
        stored = sampler.perplexity
        p_stored = sampler.probabilities()
        p_fresh = mbc_weights(fresh, sampler.power, sampler.floor)
        res.update({"spearman_perplexity": round(float(spearmanr(stored, fresh).statistic), 4),
                    "spearman_weights": round(float(spearmanr(p_stored, p_fresh).statistic), 4),
                    "weights_total_variation": round(float(0.5 * np.abs(p_stored - p_fresh).sum()), 4),
                    "stalest_scored_step": int(sampler.scored_step.min())})
    del trainer
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("demo", "dolly"), default="demo")
    ap.add_argument("--epochs", type=float, default=15.0, help="epoch-equivalents per run (re-scores, for MBC)")
    ap.add_argument("--layers", type=int, default=0, help="model layers (demo: default its 4; dolly: default 2)")
    ap.add_argument("--hidden", type=int, default=0, help="hidden size (default: the workload's)")
    ap.add_argument("--heads", type=int, default=0, help="attention heads (default: the workload's)")
    ap.add_argument("--records", type=int, default=0, help="dolly: use the first R records (default all 256)")
    ap.add_argument("--modes", default="full,incremental", help="MBC refresh modes to run")
    ap.add_argument("--fractions", default="0.1", help="incremental: comma list of mbc.refresh_fraction values")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], metavar="key=value", help="more config overrides for every run")
    args = ap.parse_args()
    from mbc_jax.launch import ensure_huge_pages

    ensure_huge_pages()  # as the CLI does: the runs measured are the trainer as users run it

    import jax

    tmp = Path(tempfile.mkdtemp(prefix="mbc-overhead-"))
    try:
        config, common = base_overrides(tmp, args)
        plan = [("baseline", ["sampler=uniform"])]
        for mode in filter(None, args.modes.split(",")):
            if mode == "full":
                plan.append(("mbc_full", ["sampler=mbc", "mbc.refresh=full"]))
            elif mode == "incremental":
                for f in filter(None, args.fractions.split(",")):
                    plan.append((f"mbc_incremental_{f}", ["sampler=mbc", "mbc.refresh=incremental",
                                                          f"mbc.refresh_fraction={f}"]))
            else:
                raise SystemExit(f"--modes: unknown mode {mode!r} (full, incremental)")
        results: dict[str, list[dict]] = {name: [] for name, _ in plan}
        t_all = time.perf_counter()
        for r in range(args.repeats):
            order = plan if r % 2 == 0 else [plan[0]] + plan[:0:-1]
            for name, extra in order:
                results[name].append(one_run(f"{name}_{r}", tmp, config, common + extra, correlate=r == 0))
                print(f"{name} #{r}: {results[name][-1]['wall_seconds']:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def best(name: str) -> dict:
        runs = results[name]
        first = runs[0]
        out = dict(min(runs, key=lambda x: x["wall_seconds"]))
        out.update({k: first[k] for k in first if k.startswith(("spearman", "weights_", "stalest"))})
        out["wall_seconds_all"] = [round(x["wall_seconds"], 2) for x in runs]
        out.pop("run")
        return out

    base = best("baseline")
    out = {"benchmark": "mbc_overhead", "impl": "mbc-jax", "jax": jax.__version__, "backend": jax.default_backend(),
           "workload": args.workload, "epochs": args.epochs, "repeats": args.repeats,
           "model": {"layers": args.layers or None, "hidden": args.hidden or None, "heads": args.heads or None},
           "steps": base["steps"], "k": base["k"], "train_records": base["train_records"],
           "baseline_seconds": round(base["wall_seconds"], 2),
           "baseline_train_seconds": round(base["train_seconds"], 2),
           "baseline_trained_real_tokens": base["trained_real_tokens"],
           "baseline_trained_padded_tokens": base["trained_padded_tokens"],
           "targets": {"mbc_full": 1.40, "mbc_incremental": 1.10}}
    for name, _ in plan[1:]:
        m = best(name)
        steady = m["wall_seconds"] - m["score_compile_seconds"]
        # The targets' premise (N forwards against 3N for the same training) holds only when both runs
        # train the same positions; this floor also counts the extra positions MBC chose to train.
        floor_padded = 1 + m["scored_padded_tokens"] / (3 * m["trained_padded_tokens"])
        floor = m["trained_padded_tokens"] / base["trained_padded_tokens"] * floor_padded
        out[name] = {
            "seconds": round(m["wall_seconds"], 2), "ratio": round(m["wall_seconds"] / base["wall_seconds"], 3),
            "ratio_without_scorer_compile": round(steady / base["wall_seconds"], 3),
            "score_seconds": round(m["score_seconds"], 2),
            "score_compile_seconds": round(m["score_compile_seconds"], 2),
            "train_seconds": round(m["train_seconds"], 2), "refreshes": m["refreshes"],
            "scored_real_tokens": m["scored_real_tokens"], "trained_real_tokens": m["trained_real_tokens"],
            "trained_padded_tokens": m["trained_padded_tokens"],
            "train_work_vs_baseline": round(m["trained_padded_tokens"] / base["trained_padded_tokens"], 3),
            "ratio_per_trained_position": round(m["wall_seconds"] / m["trained_padded_tokens"]
                                                / (base["wall_seconds"] / base["trained_padded_tokens"]), 3),
            "flop_floor_real": round(1 + m["scored_real_tokens"] / (3 * m["trained_real_tokens"]), 3),
            "flop_floor_padded": round(floor_padded, 3),
            "flop_floor_vs_baseline": round(floor, 3),
            "ratio_over_floor": round(m["wall_seconds"] / base["wall_seconds"] / floor, 3),
            # what the 1.40 target asks: seconds per scored real token over a third of the baseline's
            # train seconds per trained real token (1.0 = scoring as cheap per token as a training forward)
            "score_vs_train_forward_per_token": round(
                (m["score_seconds"] - m["score_compile_seconds"]) / m["scored_real_tokens"]
                / (base["train_seconds"] / base["trained_real_tokens"] / 3), 3),
            "distinct_records_drawn": m["distinct_records_drawn"],
            **{k: m[k] for k in m if k.startswith(("spearman", "weights_", "stalest"))},
            "wall_seconds_all": m["wall_seconds_all"],
        }
    out["baseline_wall_seconds_all"] = base["wall_seconds_all"]
    out["total_seconds"] = round(time.perf_counter() - t_all, 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
