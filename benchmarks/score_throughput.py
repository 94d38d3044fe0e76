"""Scoring throughput on the shared workload (../shared/bench): prints one JSON line.

    python benchmarks/score_throughput.py [--family gpt_neo] [--records 256] [--layers 12] [--seq-len 512]
        [--tokens-per-batch 2048] [--chunk 512] [--dtype float32] [--mode pack|bucket|pad] [--peer]
        [--no-membership]

Model: random weights in the real gpt-neo-125M shape (../shared/tokenizers/gpt-neo-125M/config.json),
float32; `--family` picks another family's ~125M shape (benchmarks/_families.py: gpt2, opt, pythia,
llama, mistral, qwen2, qwen3), scored on the same token ids. Records: dolly256_gptneo.jsonl
(pre-tokenized). Reports real tokens/s (tokens of the records), padded tokens/s (all positions
computed), compile time and peak memory, next to the peer's number from ../shared/bench/RESULTS.md
(HF transformers PyTorch, same machine kind). The scorer's membership signals (Min-K%, Min-K%++:
two more running sums in the LM head's online softmax and four sorts of [rows, length]) are on, as in
`mbc-jax score` and the trainer; `--no-membership` measures the scorer without them.

Machines of the same kind differ by tens of percent in speed, so `--peer` also runs the peer script
itself (../shared/bench/hf_torch_baseline.py, needs torch) on the same records just before this
benchmark, and reports `speedup_vs_peer_same_run`: the ratio that compares like with like. The peer
script is GPT-Neo's, so `--peer` takes only the default family.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from _families import FAMILIES, family_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEER_SCORE_TOKENS_PER_S = 111.4  # ../shared/bench/RESULTS.md, measured 2026-11-23


def bench_config(layers: int, family: str = "gpt_neo") -> dict:
    """The benchmark model's config.json: gpt-neo-125M's, or `family`'s ~125M shape (_families.py)."""
    return family_config(family, layers)


def bench_examples(records: int, vocab_size: int = 50257):
    """The shared workload's records: GPT-Neo token ids, valid in every family's vocabulary (>= 50,257)."""
    from mbc_jax.data import load_records, tokenize

    recs, _ = load_records(str(SHARED / "bench" / "dolly256_gptneo.jsonl"), schema="tokens")
    examples, _ = tokenize(recs[:records], None, max_length=512, vocab_size=vocab_size)
    return examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=FAMILIES, default="gpt_neo",
                    help="model family of the random ~125M model (benchmarks/_families.py)")
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--tokens-per-batch", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mode", choices=("pack", "bucket", "pad"), default="pack")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-membership", action="store_true", help="score without the Min-K% / Min-K%++ sums")
    ap.add_argument("--peer", action="store_true", help="run the HF torch peer script on the same records first")
    ap.add_argument("--peer-huge-pages", action="store_true",
                    help="give the peer this process's huge-page malloc tunable too (default: the peer's own default "
                         "environment, as ../shared/bench/RESULTS.md measured it)")
    args = ap.parse_args()
    if args.peer and args.family != "gpt_neo":
        raise SystemExit(f"--peer: the peer script ({SHARED / 'bench' / 'hf_torch_baseline.py'}) runs GPT-Neo only; "
                         f"drop --peer for --family {args.family}")
    from mbc_jax.launch import ensure_huge_pages

    ensure_huge_pages()  # as the CLI does; the peer's subprocess drops it unless --peer-huge-pages
    peer = run_peer(args.records, args.layers, args.peer_huge_pages) if args.peer else None

    import jax

    from _buckets import bucket, default_bucket_lengths, pad_rows
    from mbc_jax.models import init_model
    from mbc_jax.scoring import Scorer

    hf_cfg = bench_config(args.layers, args.family)
    model = init_model(hf_cfg, seed=0, dtype=args.dtype)
    examples = bench_examples(args.records, model.config.vocab_size)
    scorer = Scorer(model.module, model.mesh, seq_len=args.seq_len, tokens_per_batch=args.tokens_per_batch,
                    chunk=args.chunk, membership=not args.no_membership)
    if args.mode == "pack":
        batches = scorer.batches(examples)
    elif args.mode == "bucket":
        batches = bucket(examples, default_bucket_lengths(args.seq_len), args.tokens_per_batch)
    else:
        batches = [pad_rows(examples[i:i + 16], max(len(e) for e in examples[i:i + 16]))
                   for i in range(0, len(examples), 16)]
    scores = scorer(model.params, examples, batches)  # warm-up: compiles every shape
    compile_s = scorer.compile_seconds
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scores = scorer(model.params, examples, batches)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    real = int(sum(len(e) for e in examples))
    padded = int(sum(b.input_ids.size for b in batches))
    tps = real / dt
    print(json.dumps({
        "benchmark": "score_throughput", "impl": "mbc-jax", "jax": jax.__version__,
        "backend": jax.default_backend(), "devices": len(jax.devices()), "family": args.family,
        "model_type": model.config.model_type, "mode": args.mode, "membership": not args.no_membership,
        "layers": args.layers, "params": model.config.num_params(), "dtype": args.dtype,
        "records": len(examples), "real_tokens": real, "padded_tokens": padded,
        "batches": len(batches), "batch_shapes": sorted({str(b.input_ids.shape) for b in batches}),
        "score_seconds": round(dt, 2), "real_tokens_per_s": round(tps, 1),
        "padded_tokens_per_s": round(padded / dt, 1), "compile_seconds": round(compile_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "peer_real_tokens_per_s": PEER_SCORE_TOKENS_PER_S, "speedup_vs_peer": round(tps / PEER_SCORE_TOKENS_PER_S, 2),
        "mean_perplexity": float(np.nanmean(scores.perplexity())),
        **({} if peer is None else {
            "peer_same_run_real_tokens_per_s": peer["score_real_tokens_per_s"],
            "peer_same_run_torch": peer["torch"], "peer_same_run_huge_pages": args.peer_huge_pages,
            "speedup_vs_peer_same_run": round(tps / peer["score_real_tokens_per_s"], 2)}),
    }))


def run_peer(records: int, layers: int, huge_pages: bool = False) -> dict:
    """Runs the peer's own script in a subprocess (its scoring, then its train steps) and returns its JSON."""
    import subprocess
    import sys

    from mbc_jax.launch import without_huge_pages

    env = dict(os.environ) if huge_pages else without_huge_pages(os.environ)  # default: as the peer was published

    script = SHARED / "bench" / "hf_torch_baseline.py"
    out = subprocess.run([sys.executable, str(script), "--records", str(records), "--layers", str(layers)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{script}: the peer failed (is torch installed?):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
