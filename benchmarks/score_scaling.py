"""`mbc-jax score` at growing sizes: peak memory, tokens/s and time to the first output row; one JSON line each.

    python benchmarks/score_scaling.py [--sizes 15000,150000] [--memory-sizes 15000] [--base FOLDER]
        [--max-length 256] [--chunk-records 4096] [--stop-after-chunks N]

Data: Dolly 15k (../shared/data/dolly-15k) repeated to each size, every record given a unique id, written to a
temporary JSONL. Model: the demo base (`mbc_jax.demo.base.demo_base()`, built and cached on first use) unless
`--base`. Each run is its own subprocess, its peak RSS read from `os.wait4` (that child alone):

- `stream`: the CLI as it is (`python -m mbc_jax score`), chunks of `--chunk-records` written to OUT.partial;
  tokens/s from its summary line (the whole loop: tokenize, pack, score, write; compile included);
- `memory`: the in-memory path score had before issue 31 (every record loaded, tokenized, packed and scored,
  then the rows written at the end), run in-process by this script's `--memory-child`; its tokens/s over the
  same steps as the stream's (tokenize, pack, score with compile, rows; not the file read or the write).

Targets (issue 31): the stream's peak RSS at the largest size within 1.2x of the smallest's; its tokens/s
within 10% of the memory path's at the same size. The last line sums them up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT.parent / "shared" / "data" / "dolly-15k" / "databricks-dolly-15k.jsonl"


def write_data(path: Path, size: int) -> None:
    """`size` Dolly records (the file repeated), ids d0, d1, ... unique."""
    lines = DOLLY.read_text().splitlines()
    with open(path, "w") as f:
        for i in range(size):
            rec = json.loads(lines[i % len(lines)])
            rec["id"] = f"d{i}"
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def peak_rss_mib(cmd: list[str], out: Path, stop_after: int = 0) -> tuple[float, dict]:
    """Runs `cmd` under os.wait4 (the peak RSS of this child alone, not the maximum over earlier ones), polling
    for the first bytes of its output (OUT.partial, OUT or atomic_write's temporary file); (peak RSS in MiB,
    {wall time, time to the first row, stdout})."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MBC_JAX_PROGRESS_SECONDS="0")
    if stop_after:  # the CLI's test hook: SIGKILL after that many committed chunks
        env["MBC_JAX_TEST_KILL_AFTER_CHUNKS"] = str(stop_after)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = None
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if first is None and any(f.name.startswith((out.name, "." + out.name)) and f.stat().st_size > 0
                                 for f in out.parent.iterdir() if f.is_file()):
            first = time.perf_counter() - t0
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != (-9 if stop_after else 0):
        raise SystemExit(f"{' '.join(cmd)}: exit {os.waitstatus_to_exitcode(status)}\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024, {"wall_s": round(wall, 2), "first_row_s": None if first is None else round(first, 2),
                                    "stdout": stdout}


def memory_child(args: argparse.Namespace) -> None:
    """Score before issue 31: everything in memory, the rows written at the end. Prints {real, seconds}."""
    from mbc_jax.data import Template, load_records, tokenize
    from mbc_jax.models import load_model
    from mbc_jax.paths import write_jsonl
    from mbc_jax.scoring import Scorer

    model = load_model(args.base)
    template = Template()
    records, _ = load_records(args.data)
    t0 = time.perf_counter()  # as the stream's seconds: tokenize, pack, score (compile included), the rows
    examples, _ = tokenize(records, model.tokenizer, template, args.max_length, vocab_size=model.config.vocab_size)
    scorer = Scorer(model.module, model.mesh, seq_len=args.max_length, tokens_per_batch=2048,
                    eos_id=template.eos_id(model.tokenizer), tokenizer=model.tokenizer)
    batches = scorer.batches(examples)
    scores = scorer(model.params, examples, batches)
    rows = sorted(scores.rows(examples), key=lambda r: r["index"])
    seconds = time.perf_counter() - t0
    write_jsonl(args.out, rows)
    print(json.dumps({"real": sum(len(e) for e in examples), "seconds": seconds}))


def measure(path: str, size: int, base: str, args: argparse.Namespace, tmp: Path) -> dict:
    data, out = tmp / f"dolly-{size}.jsonl", tmp / f"out-{path}-{size}.jsonl"
    if not data.exists():
        write_data(data, size)
    if path == "stream":
        cmd = [sys.executable, "-m", "mbc_jax", "score", "--model", base, "--data", str(data), "--out", str(out),
               "--max-length", str(args.max_length), "--chunk-records", str(args.chunk_records)]
    else:
        cmd = [sys.executable, __file__, "--memory-child", "--base", base, "--data", str(data), "--out", str(out),
               "--max-length", str(args.max_length)]
    stop = args.stop_after_chunks if path == "stream" and size > args.chunk_records * args.stop_after_chunks else 0
    rss, got = peak_rss_mib(cmd, out, stop)
    if stop:  # no summary line: the rows committed so far, no tokens/s
        out = out.with_name(out.name + ".partial")
        tps = None
    elif path == "stream":
        line = next(x for x in got["stdout"].splitlines() if x.startswith("scored "))
        tps = float(line.split(" tokens/s")[0].rsplit("(", 1)[1])
    else:
        child = json.loads(got["stdout"].strip().splitlines()[-1])
        tps = child["real"] / child["seconds"]
    rows = sum(1 for _ in open(out))
    for f in out.parent.glob(out.name.removesuffix(".partial") + "*"):
        f.unlink()
    return {"benchmark": "score_scaling", "path": path, "records": size, "rows": rows, "peak_rss_mib": round(rss, 1),
            "tokens_per_s": None if tps is None else round(tps, 1), "stopped_after_chunks": stop or None,
            "wall_s": got["wall_s"], "first_row_s": got["first_row_s"],
            "max_length": args.max_length, "chunk_records": args.chunk_records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="15000,150000", help="record counts for the stream (e.g. 15000,150000,1500000)")
    ap.add_argument("--memory-sizes", default="15000", help="record counts for the in-memory path ('' for none)")
    ap.add_argument("--base", default=None, help="model folder (default: the demo base)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--chunk-records", type=int, default=4096)
    ap.add_argument("--stop-after-chunks", type=int, default=0, metavar="N",
                    help="stream sizes of more than N chunks: SIGKILL the run after N chunks (the CLI's test hook) "
                         "and report the peak RSS up to there (a long size's memory without its whole run)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)
    if args.base is None:
        from mbc_jax.demo.base import demo_base

        args.base = str(demo_base(log=lambda m: print(m, file=sys.stderr)))
    results = []
    with tempfile.TemporaryDirectory(prefix="score-scaling-") as tmp:
        for path, sizes in (("memory", args.memory_sizes), ("stream", args.sizes)):
            for size in [int(s) for s in sizes.split(",") if s]:
                results.append(measure(path, size, args.base, args, Path(tmp)))
                print(json.dumps(results[-1]), flush=True)
    stream = sorted((r for r in results if r["path"] == "stream"), key=lambda r: r["records"])
    memory = {r["records"]: r for r in results if r["path"] == "memory"}
    summary = {"benchmark": "score_scaling", "summary": True}
    if len(stream) > 1:
        ratio = stream[-1]["peak_rss_mib"] / stream[0]["peak_rss_mib"]
        summary["stream_rss_ratio_largest_to_smallest"] = round(ratio, 3)
    summary["stream_over_memory_tokens_per_s"] = {
        r["records"]: round(r["tokens_per_s"] / memory[r["records"]]["tokens_per_s"], 3)
        for r in stream if r["records"] in memory and r["tokens_per_s"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
