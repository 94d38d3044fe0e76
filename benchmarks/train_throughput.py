"""Train-step throughput on the shared workload shape (../shared/bench): prints one JSON line.

    python benchmarks/train_throughput.py [--family gpt_neo] [--layers 12] [--batch 8] [--seq-len 256]
        [--repeats 5] [--dtype float32] [--remat none] [--chunk 1024] [--variants "dtype=bfloat16;remat=dots"]
        [--no-peer] [--peer-huge-pages] [--block 3]
        [--alt-train PATCHED_train.py --variants "train=alt"]

Model: random weights in the real gpt-neo-125M shape (score_throughput.bench_config; `--family` picks
another family's ~125M shape from benchmarks/_families.py), AdamW (0.9, 0.999, weight decay 0), one
fixed 8 x 256 batch of random token ids with the loss on every target (labels = ids, like the peer).
The step is the trainer's own: `mbc_jax.train.make_train_step`, jitted with the state donated.
Reports the step time (min over repeats after a warm-up step), real tokens/s, model GFLOP/s
(6 x params x tokens, the peer's convention), MFU against the measured float32 matmul peak of this
machine (`mbc_jax.flops.peak_flops_per_device`), compile time and peak RSS.

Timings on a shared machine are noisy, so everything compared is measured in this one process,
interleaved: `--variants` adds configurations (`;`-separated, each `key=value,...`) whose steps
alternate with the main one. Keys: dtype, remat, chunk, train, attention = auto|einsum|per_head,
dropout = model|RATE (RATE on the embeddings, attention probabilities and residual branches;
`model`: the config's rates, 0 for GPT-Neo), family = another `--family`'s model (all train on the
same token ids, drawn below GPT-Neo's vocabulary, the smallest). `train=alt` takes make_train_step
from the file given by `--alt-train` (a proposed copy of mbc_jax/train.py: A/B a trainer change
without editing the package). Unless `--no-peer` the peer itself
(HF transformers GPTNeoForCausalLM + torch AdamW, 2 threads, as in hf_torch_baseline.py; for another
`--family`, transformers' own class for that config.json with its default attention) takes turns
too, in its own process, so `speedup_vs_peer_same_run` compares steps timed in the same minutes.
Turns are `--block` steps long (default 3): with strict alternation (`--block 1`) our steps ran
~10% slower than alone and the peer's faster, whether the peer ran in this process or its own.
The peer's process has its default environment, as published, unless `--peer-huge-pages` gives it
our malloc tunable too (`peer_same_run_huge_pages` says which). The peer's published numbers
(../shared/bench/RESULTS.md) are printed alongside.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_throughput import FAMILIES, bench_config  # noqa: E402

PEER_TRAIN_TOKENS_PER_S = 154.7  # ../shared/bench/RESULTS.md, measured 2026-11-23
PEER_TRAIN_STEP_S = 13.2
PEER_TRAIN_GFLOPS = 116.2
VARIANT_KEYS = ("dtype", "remat", "chunk", "train", "attention", "dropout", "family")
WORKLOAD_VOCAB = 50257  # the batch's token ids are drawn below GPT-Neo's vocabulary, the smallest of the families


def parse_variant(text: str, base: dict) -> dict:
    out = dict(base)
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS or not value:
            raise SystemExit(f"--variants: {item!r}: expected key=value with key one of {', '.join(VARIANT_KEYS)}")
        if key == "family" and value not in FAMILIES:
            raise SystemExit(f"--variants: {item!r}: family is one of {', '.join(FAMILIES)}")
        out[key] = int(value) if key == "chunk" else value
    return out


def label(v: dict) -> str:
    return ",".join(f"{k}={v[k]}" for k in VARIANT_KEYS)


def load_train_module(path: str | None):
    """mbc_jax.train, or a patched copy of it loaded from `path` under another module name."""
    if path is None:
        import mbc_jax.train as train_lib

        return train_lib
    import importlib.util

    spec = importlib.util.spec_from_file_location("mbc_jax_train_alt", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class JaxStep:
    """One configuration: its own model (same seed), optimizer state and compiled step."""

    def __init__(self, hf_cfg: dict, v: dict, batch: dict, train_lib, lr: float = 1e-5):
        import jax
        import optax

        from mbc_jax.models import init_model
        from mbc_jax.models.config import DROPOUT_FIELDS
        from mbc_jax.sharding import batch_sharding

        self.v = v
        rates = {} if v["dropout"] == "model" else dict.fromkeys(DROPOUT_FIELDS, float(v["dropout"]))
        self.model = init_model(hf_cfg, seed=0, dtype=v["dtype"], remat=v["remat"], attention_impl=v["attention"],
                                **rates)
        tx = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
        sched = optax.constant_schedule(lr)
        # make_train_step looks its head-loss function up at trace time: bind this variant's chunk size
        name = "fused_nll_loss" if hasattr(train_lib, "fused_nll_loss") else "chunked_nll"
        original = getattr(train_lib, name)
        setattr(train_lib, name, functools.partial(original, chunk=v["chunk"]))
        try:
            fn = jax.jit(train_lib.make_train_step(self.model.module, tx, sched, "full"), donate_argnums=(0,))
            params = self.model.params
            self.state = {"params": params, "opt_state": jax.jit(tx.init)(params),
                          "step": jax.numpy.zeros((), jax.numpy.int32)}
            shard = batch_sharding(self.model.mesh)
            self.batch = {k: jax.device_put(a, shard) for k, a in batch.items()}
            t0 = time.perf_counter()
            self.fn = fn.lower(self.state, self.batch).compile()
            self.compile_s = time.perf_counter() - t0
        finally:
            setattr(train_lib, name, original)
        self.times: list[float] = []
        self.model.params = None  # the state owns (and donates) the params now

    def step(self, record: bool = True) -> float:
        t0 = time.perf_counter()
        self.state, m = self.fn(self.state, self.batch)
        loss = float(m["loss"])  # blocks until the step is done
        if record:
            self.times.append(time.perf_counter() - t0)
        return loss


class PeerStep:
    """The peer's train step (hf_torch_baseline.py), on the same random batch."""

    def __init__(self, hf_cfg: dict, ids: np.ndarray, threads: int):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoConfig, GPTNeoForCausalLM

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        if hf_cfg["model_type"] == "gpt_neo":  # as hf_torch_baseline.py builds it
            self.model = GPTNeoForCausalLM(GPTNeoConfig(**hf_cfg)).train()
        else:
            fields = {k: v for k, v in hf_cfg.items() if k != "model_type"}
            self.model = AutoModelForCausalLM.from_config(AutoConfig.for_model(hf_cfg["model_type"], **fields)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0)
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.times: list[float] = []

    def step(self, record: bool = True) -> float:
        t0 = time.perf_counter()
        loss = self.model(input_ids=self.ids, labels=self.ids).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        if record:
            self.times.append(time.perf_counter() - t0)
        return float(loss.detach())


class PeerProcess:
    """The peer's train step in its own process (`--peer-worker`, its own environment), stepped on
    request so that its turns interleave with ours."""

    def __init__(self, args, huge_pages: bool):
        import os
        import subprocess

        from mbc_jax.launch import without_huge_pages

        env = dict(os.environ) if huge_pages else without_huge_pages(os.environ)  # default: as published
        cmd = [sys.executable, __file__, "--peer-worker", "--family", args.family, "--layers", str(args.layers),
               "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.params = self._reply()["params"]
        self.times: list[float] = []

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise ImportError(f"the peer worker exited ({self.proc.wait()}); is torch installed?")
        return json.loads(line)

    def step(self, record: bool = True) -> float:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        r = self._reply()
        if record:
            self.times.append(r["seconds"])
        return r["loss"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def bench_ids(batch: int, seq_len: int) -> np.ndarray:
    """The fixed random batch of token ids that both sides, and every family, train on."""
    return np.random.default_rng(0).integers(0, WORKLOAD_VOCAB, (batch, seq_len)).astype(np.int32)


def peer_worker(args) -> None:
    """`--peer-worker`: one PeerStep, a step per 'step' line on stdin, a JSON line back for each."""
    hf_cfg = bench_config(args.layers, args.family)
    peer = PeerStep(hf_cfg, bench_ids(args.batch, args.seq_len), args.threads)
    print(json.dumps({"params": peer.params}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        loss = peer.step()
        print(json.dumps({"seconds": peer.times[-1], "loss": loss}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=FAMILIES, default="gpt_neo",
                    help="model family of the random ~125M model (benchmarks/_families.py)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (min is reported)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    ap.add_argument("--chunk", type=int, default=1024,
                    help="positions per chunk of chunked_nll (the trainer's default: 1024)")
    ap.add_argument("--variants", default="",
                    help="more configurations, interleaved: 'dtype=bfloat16;remat=dots,chunk=512'")
    ap.add_argument("--alt-train", default=None,
                    help="a patched copy of mbc_jax/train.py, used by variants with train=alt")
    ap.add_argument("--no-peer", action="store_true", help="skip running the HF torch peer")
    ap.add_argument("--peer-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the peer")
    ap.add_argument("--peer-huge-pages", action="store_true",
                    help="give the peer's process this process's huge-page malloc tunable too (default: the peer's "
                         "own default environment, as ../shared/bench/RESULTS.md measured it)")
    ap.add_argument("--gap", type=float, default=1.0,
                    help="seconds of idle before each timed step (the session-4 figures used 1; against strict "
                         "alternation's cross-talk it made no measurable difference, turns of --block steps did)")
    ap.add_argument("--block", type=int, default=3,
                    help="consecutive timed steps per configuration per turn (1: strict alternation, which "
                         "here slowed our steps by ~10%% and sped the peer's up: see benchmarks/README.md)")
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_worker:
        return peer_worker(args)
    from mbc_jax.launch import ensure_huge_pages

    ensure_huge_pages()  # as the CLI does; the peer's process drops it unless --peer-huge-pages

    import jax

    from mbc_jax.flops import peak_flops_per_device, train_flops_per_token

    b, t = args.batch, args.seq_len
    ids = bench_ids(b, t)
    batch = {"input_ids": ids, "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
             "segment_ids": np.ones((b, t), np.int32), "response_mask": np.ones((b, t), bool),
             "record_index": np.arange(b, dtype=np.int32)[:, None]}
    base = {"dtype": args.dtype, "remat": args.remat, "chunk": args.chunk, "train": "repo", "attention": "auto",
            "dropout": "model", "family": args.family}
    variants = [base] + [parse_variant(s, base) for s in args.variants.split(";") if s.strip()]
    if any(v["train"] not in ("repo", "alt") for v in variants) or (any(v["train"] == "alt" for v in variants)
                                                                    and not args.alt_train):
        raise SystemExit("--variants: train=alt needs --alt-train FILE (train=repo is the package's trainer)")
    modules = {"repo": load_train_module(None), "alt": load_train_module(args.alt_train) if args.alt_train else None}

    runners = [JaxStep(bench_config(args.layers, v["family"]), v, batch, modules[v["train"]]) for v in variants]
    peer = None
    if not args.no_peer:
        try:
            peer = PeerProcess(args, args.peer_huge_pages)
        except ImportError as e:
            print(f"peer skipped: {e}", file=sys.stderr)

    # warm-up (first execution after compile), then interleave: every round runs each config once
    losses = {label(r.v): r.step(record=False) for r in runners}
    if peer is not None:
        peer.step(record=False)
    peaks = []
    rounds = max(args.repeats, args.peer_repeats if peer else 0)
    for i in range(0, rounds, args.block):
        peaks += [peak_flops_per_device(0.0) for _ in range(3)]
        for r in runners:
            for _ in range(max(0, min(args.block, args.repeats - i))):
                time.sleep(args.gap)
                losses[label(r.v)] = r.step()
        for _ in range(max(0, min(args.block, args.peer_repeats - i)) if peer is not None else 0):
            time.sleep(args.gap)
            peer.step()
    peak = max(peaks) * len(jax.devices())  # the matmul probe is short; its best run is the least disturbed

    params = runners[0].model.config.num_params()
    tokens = b * t

    def summary(r: JaxStep) -> dict:
        dt = min(r.times)
        params, analytic = r.model.config.num_params(), train_flops_per_token(r.model.config, t)
        return {"config": label(r.v), "step_seconds": round(dt, 3),
                "step_seconds_median": round(float(np.median(r.times)), 3),
                "tokens_per_s": round(tokens / dt, 1), "model_gflops_per_s": round(6 * params * tokens / dt / 1e9, 1),
                "mfu": round(6 * params * tokens / dt / peak, 3),
                "mfu_analytic": round(analytic * tokens / dt / peak, 3),
                "compile_seconds": round(r.compile_s, 1), "final_loss": round(losses[label(r.v)], 4)}

    main_s = summary(runners[0])
    out = {"benchmark": "train_throughput", "impl": "mbc-jax", "jax": jax.__version__,
           "backend": jax.default_backend(), "devices": len(jax.devices()), "family": args.family,
           "model_type": runners[0].model.config.model_type, "layers": args.layers,
           "params": params, "batch": [b, t], "tokens_per_step": tokens, **main_s,
           "repeats": args.repeats, "matmul_peak_gflops_per_s": round(peak / 1e9, 1),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "peer_tokens_per_s": PEER_TRAIN_TOKENS_PER_S, "peer_step_seconds": PEER_TRAIN_STEP_S,
           "speedup_vs_peer": round(main_s["tokens_per_s"] / PEER_TRAIN_TOKENS_PER_S, 2)}
    if peer is not None:
        peer.close()
        pdt = min(peer.times)
        out.update({"peer_same_run_step_seconds": round(pdt, 3), "peer_same_run_tokens_per_s": round(tokens / pdt, 1),
                    "peer_same_run_repeats": len(peer.times), "peer_same_run_huge_pages": args.peer_huge_pages,
                    "speedup_vs_peer_same_run": round(pdt / main_s["step_seconds"], 2)})
    if len(runners) > 1:
        out["variants"] = [{**summary(r), "speed_vs_first": round(main_s["step_seconds"] / min(r.times), 3)}
                           for r in runners[1:]]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
