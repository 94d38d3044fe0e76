"""Generation throughput against Hugging Face `generate`, side by side in one run: prints one JSON line.

    python benchmarks/generate_throughput.py [--configs 16x64,16x192,1x64,64x64,16x256] [--repeats 2]
        [--block 1] [--no-peer] [--model DIR] [--bucket 32]

Workload (../shared/bench/RESULTS.md, "Generation"): random weights in the real gpt-neo-125M shape,
built by the peer script itself (`../shared/bench/hf_generate_baseline.py --save DIR`, so both sides
run the very same weights and tokenizer; kept in --model, default /tmp/mbc_jax_generate_bench); the
first B Dolly records without context and with an instruction of at most 200 characters, rendered
`Human: {instruction}\\n\\nAssistant:`; the paper's sampling (top-p 0.9, temperature 0.7, repetition
penalty 1.2); exactly N new tokens per prompt (EOS ignored on our side, min_new_tokens on the peer's).
A config `BxN` is B prompts in one batch, N new tokens each.

The peer runs in its own process (its default environment, 2 torch threads), exactly as
hf_generate_baseline.py calls `generate`, and the two sides take turns of --block timed calls each,
so every ratio compares calls timed in the same minutes. The machine is shared: the 1-minute load
average is recorded at every timed call and reported next to each number.

Per config, each side reports: new tokens/s warm (best call), the seconds of every call, prefill and
decode time separately (prefill: a separately timed call that only prefills, ours the decode
program's own prefill jitted alone, the peer's `generate` with max_new_tokens=1; decode: the rest of
the best call) and the load average. Ours also reports the compile time per prompt bucket (JAX's
own compile-duration events) and both sides their peak RSS. `speedup_same_run` = our new tokens/s
over the peer's, from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEER_SCRIPT = SHARED / "bench" / "hf_generate_baseline.py"
DOLLY = SHARED / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"
DEFAULT_CONFIGS = "16x64,16x192,1x64,64x64,16x256"


def prompt_texts(n: int) -> list[str]:
    """The peer script's prompts: the first n Dolly records without context, instruction <= 200 characters."""
    out = []
    with open(DOLLY) as f:
        for line in f:
            r = json.loads(line)
            if r["context"] or len(r["instruction"]) > 200:
                continue
            out.append(f"Human: {r['instruction']}\n\nAssistant:")
            if len(out) == n:
                break
    return out


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        b, _, n = item.partition("x")
        if not (b.isdigit() and n.isdigit()):
            raise SystemExit(f"--configs: {item!r}: expected BATCHxNEW_TOKENS, e.g. 16x64")
        out.append((int(b), int(n)))
    return out


def ensure_model(path: Path) -> None:
    """The peer's random model and tokenizer, saved by the peer script itself."""
    if (path / "model.safetensors").exists():
        return
    print(f"building the peer's model into {path} (hf_generate_baseline.py --save)", file=sys.stderr)
    subprocess.run([sys.executable, str(PEER_SCRIPT), "--save", str(path), "--new-tokens", "1", "--prompts", "1"],
                   check=True, stdout=subprocess.DEVNULL)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------ the peer


def peer_worker(args) -> None:
    """`--peer-worker`: HF generate as the peer script calls it; one JSON request per stdin line."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    print(json.dumps({"torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        enc = tok(prompt_texts(req["batch"]), return_tensors="pt", padding=True)
        load = load1()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, top_p=0.9, temperature=0.7, repetition_penalty=1.2,
                                 max_new_tokens=req["new"], min_new_tokens=req["new"], pad_token_id=tok.eos_token_id)
        dt = time.perf_counter() - t
        print(json.dumps({"seconds": dt, "new_tokens": int((out.shape[1] - enc.input_ids.shape[1]) * out.shape[0]),
                          "prompt_len_padded": int(enc.input_ids.shape[1]), "load1": load,
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
              flush=True)


class Peer:
    def __init__(self, args):
        from mbc_jax.launch import without_huge_pages

        cmd = [sys.executable, __file__, "--peer-worker", "--model", str(args.model), "--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=without_huge_pages(os.environ))  # the peer's default environment
        line = self.proc.stdout.readline()
        if not line:
            raise ImportError(f"the peer worker exited ({self.proc.wait()}); is torch installed?")
        self.torch = json.loads(line)["torch"]

    def run(self, batch: int, new: int) -> dict:
        self.proc.stdin.write(json.dumps({"batch": batch, "new": new}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# ------------------------------------------------------------------------------ ours


class Ours:
    def __init__(self, args):
        import jax

        from mbc_jax.models import load_model

        self.jax = jax
        self.model = load_model(str(args.model))
        self.bucket = args.bucket
        self.compile_s = 0.0
        names = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                 "/jax/core/compile/backend_compile_duration")

        def listen(event: str, seconds: float, **_) -> None:
            if event in names:
                self.compile_s += seconds

        jax.monitoring.register_event_duration_secs_listener(listen)

    def prompts(self, batch: int) -> list[list[int]]:
        return [self.model.tokenizer(t)["input_ids"] for t in prompt_texts(batch)]

    def run(self, batch: int, new: int, seed: int = 0) -> dict:
        from mbc_jax.generate import SamplingConfig, generate

        prompts = self.prompts(batch)
        cfg = SamplingConfig(max_new_tokens=new, ignore_eos=True)  # the paper's sampling settings
        load = load1()
        before = self.compile_s
        t = time.perf_counter()
        gens = generate(self.model, prompts, cfg, seed=seed, batch_size=batch, bucket=self.bucket)
        dt = time.perf_counter() - t
        return {"seconds": dt, "new_tokens": sum(g.num_tokens for g in gens), "load1": load,
                "compile_seconds": self.compile_s - before}

    def prefill(self, batch: int, new: int) -> float:
        """The decode's own prefill program (`decode._prefill`: cache init, one forward pass over the padded
        prompts, last logits), on the layers as `generate` lays them out, warm: seconds of the best of 2 calls."""
        import numpy as np

        from mbc_jax.generate.decode import _prefill, _unstack, bucket_length

        jax, model = self.jax, self.model
        prompts = self.prompts(batch)
        t = bucket_length(max(len(p) for p in prompts), self.bucket)
        ids = np.zeros((batch, t), np.int32)
        seg = np.zeros((batch, t), np.int32)
        for r, p in enumerate(prompts):
            ids[r, t - len(p):], seg[r, t - len(p):] = p, 1
        live, keys = np.ones((batch,), bool), np.arange(batch, dtype=np.uint32)
        params = _unstack(model.params)
        call = lambda: _prefill(model.module, new, params, ids, seg, live, keys, np.uint32(0))  # noqa: E731
        jax.block_until_ready(call())
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best = min(best, time.perf_counter() - t0)
        return best


def summarize(calls: list[dict], prefill_s: float | None) -> dict:
    best = min(calls, key=lambda c: c["seconds"])
    out = {"new_tokens_per_s": round(best["new_tokens"] / best["seconds"], 1), "seconds": round(best["seconds"], 2),
           "seconds_all": [round(c["seconds"], 2) for c in calls], "load1_all": [c["load1"] for c in calls],
           "load1_best": best["load1"], "new_tokens": best["new_tokens"]}
    if prefill_s is not None:
        out.update(prefill_seconds=round(prefill_s, 3), decode_seconds=round(best["seconds"] - prefill_s, 2),
                   decode_tokens_per_s=round(best["new_tokens"] / max(best["seconds"] - prefill_s, 1e-9), 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="BATCHxNEW_TOKENS, comma-separated")
    ap.add_argument("--repeats", type=int, default=2, help="timed warm calls per side and config")
    ap.add_argument("--block", type=int, default=1, help="consecutive timed calls per side per turn")
    ap.add_argument("--model", type=Path, default=Path("/tmp/mbc_jax_generate_bench"))
    ap.add_argument("--bucket", type=int, default=None, help="prompt bucket (default: generate's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the peer")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-prefill", action="store_true", help="skip the separate prefill timings")
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_worker:
        return peer_worker(args)
    from mbc_jax.launch import ensure_huge_pages

    ensure_huge_pages()  # as the CLI does; the peer's process gets its default environment
    ensure_model(args.model)
    from mbc_jax.generate import DEFAULT_BUCKET, bucket_length

    args.bucket = args.bucket or DEFAULT_BUCKET
    configs = parse_configs(args.configs)
    ours = Ours(args)
    peer = None if args.no_peer else Peer(args)
    import jax

    results = []
    for batch, new in configs:
        first = ours.run(batch, new)  # compiles (one prompt bucket: the prompts are <= 45 tokens)
        bucket = bucket_length(max(len(p) for p in ours.prompts(batch)), args.bucket)
        row = {"config": f"{batch}x{new}", "batch": batch, "new_tokens_per_prompt": new,
               "ours_compile_seconds_per_bucket": {str(bucket): round(first["compile_seconds"], 2)},
               "ours_first_call_seconds": round(first["seconds"], 2)}
        mine, theirs = [], []
        if peer is not None:
            peer.run(batch, new)  # warm-up, as the peer script does
        for i in range(0, args.repeats, args.block):
            for _ in range(min(args.block, args.repeats - i)):
                mine.append(ours.run(batch, new, seed=1 + len(mine)))
            if peer is not None:
                for _ in range(min(args.block, args.repeats - i)):
                    theirs.append(peer.run(batch, new))
        prefill = None if args.no_prefill else ours.prefill(batch, new)
        row["ours"] = summarize(mine, prefill)
        if peer is not None:
            peer_prefill = None if args.no_prefill else peer.run(batch, 1)["seconds"]
            row["peer"] = summarize(theirs, peer_prefill)
            row["peer"]["prompt_len_padded"] = theirs[0]["prompt_len_padded"]
            row["peer"]["peak_rss_mib"] = max(c["peak_rss_mib"] for c in theirs)
            row["speedup_same_run"] = round(row["ours"]["new_tokens_per_s"] / row["peer"]["new_tokens_per_s"], 2)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress: one line per config
        results.append(row)
    out = {"benchmark": "generate_throughput", "impl": "mbc-jax", "jax": jax.__version__,
           "backend": jax.default_backend(), "devices": len(jax.devices()), "cpus": os.cpu_count(),
           "model": "gpt-neo-125M shape, random weights (hf_generate_baseline.py --save)",
           "sampling": "top_p 0.9, temperature 0.7, repetition penalty 1.2, EOS ignored", "bucket": args.bucket,
           "repeats": args.repeats, "block": args.block, "configs": results,
           "ours_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if peer is not None:
        out["peer"] = f"HF transformers generate, torch {peer.torch}, {args.threads} threads, its own process"
        out["peer_peak_rss_mib"] = max(c.get("peer", {}).get("peak_rss_mib", 0) for c in results) or None
        peer.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
