"""`mbc-jax plan`: will this config fit on that hardware? Compile ahead of time and count bytes.

    mbc-jax plan --config experiments/configs/gpt_neo_2p7b_mbc_lr1e-5.yaml --mesh 1,-1,1 \\
        --devices 16 --device-memory 16

Builds the mesh on N fake CPU devices, the model's parameters and AdamW state as abstract shapes
with their shardings (`jax.eval_shape`: nothing is allocated, so a 2.7B model plans on a laptop),
and compiles the train step and the scorer for them exactly as `mbc-jax train` does. Reports per
device: parameters and optimizer state (from the shardings), and from XLA's memory analysis of
each compiled program its arguments, outputs and temporaries (activations, gradients,
workspace), and whether the larger of the two peaks fits `--device-memory` (GiB; exit code 1 if
not); and the disk the run's checkpoints take (full train states kept for resume, param snapshots
at every checkpoint step; `checkpoints.disk_needed`). Only the model's `config.json` is read: a
local folder, the local Hugging Face cache, the built-in shapes in `mbc_jax/model_configs/`, or
`--model-config FILE`.

`--health` (opt-in, real work) also loads the config's model weights and takes the trainer's step-0 MBC
refresh on these CPU devices: one scoring pass over the training records, then the sampling health of the
step-0 weights (`commands/plan_health.py`).

The numbers are what XLA's CPU compiler plans for the sharded program; a TPU or GPU compiler
fuses differently (and CPU computes bfloat16 matmuls in float32), so leave some headroom.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mbc_jax import UserError
from mbc_jax.commands.common import add_mesh_arg
from mbc_jax.commands.plan_health import data_summary, health_report, step0_health

GIB = 1 << 30
BUILTIN = Path(__file__).resolve().parents[1] / "model_configs"
CHILD_ENV = "MBC_JAX_PLAN_CHILD"


def register(sub) -> None:
    p = sub.add_parser("plan", help="compile the train step and scorer for a mesh on fake devices; per-device memory")
    p.add_argument("--config", default=None, help="training config YAML (see experiments/configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. batch_size=16")
    add_mesh_arg(p)
    p.add_argument("--devices", type=int, default=None,
                   help="number of devices (default: the mesh's size; needed when the mesh has a -1)")
    p.add_argument("--device-memory", type=float, default=None, metavar="GIB",
                   help="memory per device in GiB (32 for TPU v4, 16 for v5e, 80 for H100); exit 1 if it does not fit")
    p.add_argument("--model-config", default=None, metavar="FILE",
                   help="config.json (or its folder) to use instead of the config's `model`")
    p.add_argument("--segments", type=int, default=None,
                   help="records per packed scoring row to plan for (default: max_length // 32)")
    p.add_argument("--train-records", type=int, default=None, metavar="N",
                   help="training records after the validation split, to count the checkpoint steps for the disk "
                        "total (not needed for the demo, or when steps and checkpoint_every are set)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer folder: also load and tokenize the config's data as training would, and report "
                        "the training records, those left out with no loss target and the cut responses (by "
                        "category), and the steps (the record count replaces --train-records)")
    p.add_argument("--health", action="store_true",
                   help="also load the config's model weights and score its training records once, as training "
                        "does at step 0, and report MBC's sampling health: the effective sample size of the "
                        "step-0 weights, the largest weight, the top 1%%'s share, and the trainer's warning line "
                        "naming the heaviest records when they concentrate (real work: a forward pass per record)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the plan's numbers (bytes) as JSON to FILE")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- devices


def _device_count(mesh: tuple[int, int, int], devices: int | None) -> int:
    known = math.prod(d for d in mesh if d != -1)
    if devices is None:
        if -1 in mesh:
            raise UserError(f"--mesh {','.join(map(str, mesh))} has a -1: give --devices N (the chips of the slice)")
        return known
    if devices < 1:
        raise UserError(f"--devices: must be positive, got {devices}")
    if devices % known or (-1 not in mesh and known != devices):
        raise UserError(f"--mesh {','.join(map(str, mesh))} does not fit {devices} devices "
                        f"(the sizes must multiply to {devices}, with -1 for the rest)")
    return devices


def _with_device_count(flags: str, n: int) -> str:
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
    return f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _cpu_devices(n: int) -> list | None:
    """N CPU devices of this process, or None: the plan then runs in a process of its own (`_rerun`).

    This process's JAX configuration is never changed (a command run inside a test or a notebook leaves
    JAX as it found it): its devices are used only when JAX already runs, or would start, on the CPU with
    at least N devices as its environment stands; otherwise a fresh process gets the flags.
    """
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized() and not _env_gives_cpus(n):
        return None
    try:
        cpus = jax.devices("cpu")
    except RuntimeError:  # JAX started without its CPU backend
        return None
    return cpus[:n] if len(cpus) >= n else None


def _env_gives_cpus(n: int) -> bool:
    """Whether JAX, started now as the environment stands, would run on the CPU alone with >= N devices."""
    import jax

    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    count = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    configured = jax.config.jax_num_cpu_devices
    have = configured if configured > 0 else int(count.group(1)) if count else 1
    return platforms == "cpu" and have >= n


def _rerun(argv: list[str], n: int) -> int:
    """Runs this plan again in a fresh process that starts JAX with N CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=_with_device_count(os.environ.get("XLA_FLAGS", ""), n))
    env[CHILD_ENV] = "1"
    sys.stdout.flush()
    return subprocess.run([sys.executable, "-m", "mbc_jax", "plan", *argv], env=env).returncode


# ----------------------------------------------------------------------------- model config


def _read_config(path: Path, what: str) -> dict:
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"{what}: {path}: no such file")
    from mbc_jax.models.config import read_config_json

    return read_config_json(path)


def builtin_config(name: str) -> Path | None:
    """The built-in config.json for a hub id such as EleutherAI/gpt-neo-2.7B (case-insensitive)."""
    key = name.rstrip("/").split("/")[-1].lower()
    for f in BUILTIN.glob("*.json"):
        if f.stem.lower() == key:
            return f
    return None


def model_config(cfg: Any, model_config_file: str | None) -> tuple[dict, str]:
    """(config.json dict, where it came from) for the training config's model, without weights."""
    if model_config_file:
        return _read_config(Path(model_config_file).expanduser(), "--model-config"), model_config_file
    name = cfg.model
    if name == "demo":
        import tempfile

        from mbc_jax.demo import materialize

        with tempfile.TemporaryDirectory(prefix="mbc-plan-") as tmp:
            paths = materialize(tmp, num_records=cfg.demo_records, seed=0)
            return _read_config(paths["config"], "model"), "the demo model"
    path = Path(name).expanduser()
    if path.is_dir():
        return _read_config(path, "model"), str(path / "config.json")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return _read_config(Path(cached), "model"), cached
    except Exception:  # not a valid repo id, or no cache: try the built-in shapes
        pass
    builtin = builtin_config(name)
    if builtin is not None:
        return _read_config(builtin, "model"), f"built-in {builtin.name}"
    known = ", ".join(sorted(f.stem for f in BUILTIN.glob("*.json")))
    raise UserError(f"model {name!r}: no local folder, not in the Hugging Face cache, and no built-in shapes "
                    f"(built-in: {known}); pass --model-config path/to/config.json")


# ----------------------------------------------------------------------------- the plan


def _bytes_per_device(tree: Any) -> int:
    from mbc_jax.sharding import per_device_bytes

    per = per_device_bytes(tree)
    return max(per.values()) if per else 0


def _memory(compiled: Any) -> dict[str, int]:
    m = compiled.memory_analysis()
    if m is None:
        raise UserError("this JAX's CPU compiler gives no memory analysis; upgrade jax")
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes)}
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    return out


def checkpoint_disk(cfg: Any, state: dict, train_records: int | None = None,
                    records_from: str = "--train-records") -> dict:
    """The disk the run's checkpoints need (`checkpoints.disk_needed`), its checkpoint steps counted from
    `train_records`, the demo's `demo_records`, or `steps` + `checkpoint_every` (no record count needed)."""
    from mbc_jax.checkpoints import checkpoint_schedule, disk_needed, snapshot_dtype, total_steps

    n, source = train_records, records_from
    if n is None and cfg.data == "demo" and not cfg.val_data:  # the demo validates on its own valid.jsonl
        n, source = cfg.demo_records, "demo_records"
    if n is None and cfg.steps and cfg.checkpoint_every:
        n, source = 1, None  # the schedule does not depend on it
    steps = len(checkpoint_schedule(cfg, n)) if n is not None else None
    return {**disk_needed(state, snapshot_dtype(cfg), cfg.keep_checkpoints, steps),
            "train_records": n if source else None, "train_records_from": source,
            "total_steps": total_steps(cfg, n) // cfg.grad_accum if n is not None else None}


def plan(cfg: Any, hf_config: dict, devices: list, segments: int | None = None,
         train_records: int | None = None, records_from: str = "--train-records") -> dict:
    """Compiles the train step and the scorer for `cfg` on a mesh of `devices`; per-device bytes, and the
    checkpoints' disk (`checkpoint_disk`)."""
    import time

    import jax

    from mbc_jax.checkpoints import abstract_train_state
    from mbc_jax.models import abstract_params, config_from_hf
    from mbc_jax.scoring import Scorer
    from mbc_jax.sharding import batch_sharding, make_mesh, mesh_str
    from mbc_jax.train import abstract_batch, model_runtime, step_program

    mcfg = config_from_hf(hf_config).replace(**model_runtime(cfg))
    if cfg.max_length > mcfg.max_position_embeddings:
        raise UserError(f"max_length: {cfg.max_length} exceeds the model's {mcfg.max_position_embeddings} positions")
    mesh = make_mesh(cfg.mesh, devices)
    abstract, shardings, module = abstract_params(mcfg, mesh)
    params = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    program = step_program(cfg, module, mesh, train_records)  # the Trainer's own optimizer, step and batch shape
    state = abstract_train_state(program.tx, params, mesh)
    disk = checkpoint_disk(cfg, state, train_records, records_from)
    params, opt_state = state["params"], state["opt_state"]

    shard = batch_sharding(mesh)
    t0 = time.perf_counter()
    train = _memory(program.step.lower(state, program.abstract_batch(shard)).compile())
    train_seconds = time.perf_counter() - t0

    scorer = Scorer(module, mesh, seq_len=cfg.max_length, tokens_per_batch=cfg.score_tokens_per_batch)
    segments = segments or max(1, cfg.max_length // 32)
    score_batch = abstract_batch(scorer.rows, cfg.max_length, segments, shard)
    t0 = time.perf_counter()
    score = _memory(scorer.lower(params, score_batch).compile())
    score_seconds = time.perf_counter() - t0

    param_bytes, opt_bytes = _bytes_per_device(params), _bytes_per_device(opt_state)
    # while scoring (MBC re-score, memorization snapshots) the optimizer state stays on the device
    score["peak_with_optimizer_state"] = score["peak"] + opt_bytes
    return {
        "mesh": mesh_str(mesh), "devices": len(mesh.devices.flat), "parameters": mcfg.num_params(),
        "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "remat": cfg.remat,
        "train_batch": [program.batch_rows, cfg.max_length], "score_batch": [scorer.rows, cfg.max_length, segments],
        "per_device": {"parameters": param_bytes, "optimizer_state": opt_bytes,
                       "activations_and_temporaries": train["temporaries"], "train_step": train, "scorer": score},
        "peak_per_device": max(train["peak"], score["peak_with_optimizer_state"]),
        "compile_seconds": {"train_step": round(train_seconds, 1), "scorer": round(score_seconds, 1)},
        "disk": disk,
    }


def gib(n: int) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1 (KiB, MiB, GiB)."""
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def plan_data(cfg: Any, tokenizer_dir: str, vocab_size: int | None) -> dict:
    """The config's data as training reads it (`run_setup.tokenize_run_data`): the training records, those left
    out with no loss target and the responses truncation cut, by category. Its log goes to stderr."""
    import tempfile

    from mbc_jax.models import load_tokenizer
    from mbc_jax.run_folder import data_paths
    from mbc_jax.run_setup import tokenize_run_data

    folder = Path(tokenizer_dir).expanduser()
    tokenizer = load_tokenizer(folder) if folder.is_dir() else None
    if tokenizer is None:
        raise UserError(f"--tokenizer {tokenizer_dir}: no tokenizer files there")
    with tempfile.TemporaryDirectory(prefix="mbc-plan-data-") as tmp:
        if cfg.data == "demo":
            from mbc_jax.demo import materialize

            materialize(Path(tmp) / "data", num_records=cfg.demo_records, seed=0)
        data = tokenize_run_data(cfg, *data_paths(cfg, Path(tmp)), tokenizer, vocab_size,
                                 log=lambda m: print(m, file=sys.stderr))
    return data_summary(data)


def steps_line(disk: dict) -> str:
    """The run's optimizer steps, where the training record count is known."""
    if disk.get("total_steps") is None:
        return "optimizer steps: unknown (give --train-records N or --tokenizer DIR)"
    n, source = disk["train_records"], disk["train_records_from"]
    return f"optimizer steps: {disk['total_steps']:,}" + (f" ({n:,} training records, from {source})" if n else "")


def data_report(data: dict | None) -> list[str]:
    """The data section of the plan: records, those left out, cut responses, and the steps they give."""
    if data is None:
        return []

    def cats(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    return ["", f"data: {data['train_records']} training records, {data['val_records']} validation",
            f"  left out, no {data['loss_on']} target after truncation: {data['no_target']} "
            f"({cats(data['no_target_by_category'])})",
            f"  responses cut by truncation (kept): {data['cut_response']} ({cats(data['cut_response_by_category'])})"]


def report(result: dict, model: str, source: str, memory_gib: float | None) -> str:
    pd, tr, sc = result["per_device"], result["per_device"]["train_step"], result["per_device"]["scorer"]
    rows, length = result["train_batch"]
    srows, _, segs = result["score_batch"]
    lines = [
        f"plan: {model} ({result['parameters'] / 1e9:.3g} B parameters; shapes from {source})",
        f"mesh {result['mesh']} on {result['devices']} devices; compute {result['dtype']}, params "
        f"{result['param_dtype']}, remat {result['remat']}",
        f"train batch {rows} x {length} tokens; scoring batch {srows} x {length} tokens ({segs} records per row)",
        steps_line(result["disk"]),
        "",
        f"{'per device':<34}{'train step':>14}{'scorer':>14}",
        f"{'  parameters':<34}{gib(pd['parameters']):>14}{gib(pd['parameters']):>14}",
        f"{'  optimizer state (AdamW)':<34}{gib(pd['optimizer_state']):>14}{gib(pd['optimizer_state']):>14}",
        f"{'  compiled arguments':<34}{gib(tr['arguments']):>14}{gib(sc['arguments']):>14}",
        f"{'  compiled outputs (not aliased)':<34}{gib(tr['outputs'] - tr['aliased']):>14}"
        f"{gib(sc['outputs'] - sc['aliased']):>14}",
        f"{'  activations + temporaries':<34}{gib(tr['temporaries']):>14}{gib(sc['temporaries']):>14}",
        f"{'  peak':<34}{gib(tr['peak']):>14}{gib(sc['peak_with_optimizer_state']):>14}",
        f"(compiled in {result['compile_seconds']['train_step']} s and {result['compile_seconds']['scorer']} s; "
        f"the scorer's peak counts the optimizer state, which stays on the device while scoring)",
    ]
    lines += data_report(result.get("data"))
    lines += health_report(result.get("health"))
    lines += disk_report(result["disk"])
    peak = result["peak_per_device"]
    if memory_gib is not None:
        share = peak / (memory_gib * GIB)
        verdict = "fits" if share <= 1 else "does not fit"
        lines.append(f"device memory {memory_gib:g} GiB: {verdict} (peak {gib(peak)} = {share:.0%})")
    else:
        lines.append(f"peak per device {gib(peak)} (give --device-memory GIB for a verdict)")
    return "\n".join(lines)


def disk_report(d: dict) -> list[str]:
    snap = (f"param snapshot {gib(d['param_snapshot_bytes'])} ({d['snapshot_dtype']})" if d["snapshot_dtype"]
            else "no param snapshots (save_params: none)")
    lines = ["", f"disk (checkpoints, all devices together): full train state {gib(d['full_state_bytes'])} "
                 f"(params, AdamW moments, step), {snap}"]
    if d["checkpoint_steps"] is None:
        return lines + ["  give --train-records N (training records after the validation split) for the run's "
                        "checkpoint steps and the total"]
    where = f" ({d['train_records']} training records, from {d['train_records_from']})" if d["train_records"] else ""
    lines.append(f"  {d['checkpoint_steps']} checkpoint steps{where}; keep_checkpoints {d['keep_checkpoints']}: "
                 f"{d['full_states_peak']} full states at most (the latest kept, step 0, the one being written), "
                 f"{d['param_snapshots']} param snapshots")
    lines.append(f"  needs {gib(d['peak_bytes'])} ({d['peak_bytes']} bytes) = {d['full_states_peak']} x "
                 f"{gib(d['full_state_bytes'])} + {d['param_snapshots']} x {gib(d['param_snapshot_bytes'])}; "
                 f"{gib(d['end_bytes'])} when the run ends")
    return lines


def run(args: argparse.Namespace) -> int:
    from mbc_jax import config as config_lib
    from mbc_jax.sharding import parse_mesh

    if args.mesh is None:
        raise UserError("--mesh D,F,T is required (e.g. 1,-1,1 for FSDP over all devices)")
    if args.device_memory is not None and args.device_memory <= 0:
        raise UserError(f"--device-memory: must be positive (GiB), got {args.device_memory}")
    if args.segments is not None and args.segments < 1:
        raise UserError(f"--segments: must be positive, got {args.segments}")
    if args.train_records is not None and args.train_records < 1:
        raise UserError(f"--train-records: must be positive, got {args.train_records}")
    mesh = parse_mesh(args.mesh)
    n = _device_count(mesh, args.devices)
    cfg = config_lib.load(args.config, [*args.overrides, f"mesh={args.mesh}"])
    hf_config, source = model_config(cfg, args.model_config)
    from mbc_jax.models import config_from_hf

    config_from_hf(hf_config, source)  # a bad config.json is a one-line error before any device work
    devices = _cpu_devices(n)
    if devices is None:
        if os.environ.get(CHILD_ENV):
            raise UserError(f"could not start JAX with {n} CPU devices")
        return _rerun(_argv(args), n)
    data = plan_data(cfg, args.tokenizer, hf_config.get("vocab_size")) if args.tokenizer else None
    health, scored = step0_health(cfg, devices) if args.health else (None, None)
    data, records_from = (data, "--tokenizer") if data else (scored, "--health") if scored else (None, None)
    records = data["train_records"] if data else args.train_records
    result = plan(cfg, hf_config, devices, args.segments, records, records_from or "--train-records")
    result["data"], result["health"] = data, health
    fits = args.device_memory is None or result["peak_per_device"] <= args.device_memory * GIB
    print(report(result, cfg.model, source, args.device_memory))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**result, "model": cfg.model, "model_config": source,
                                    "device_memory_gib": args.device_memory,
                                    "fits": fits if args.device_memory is not None else None}, indent=2) + "\n")
    return 0 if fits else 1


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line of this plan, for the re-run."""
    out = [f"--mesh={args.mesh}"]  # "=": a mesh such as -1,1,1 is not taken for an option
    for flag, value in (("--config", args.config), ("--devices", args.devices), ("--device-memory", args.device_memory),
                        ("--model-config", args.model_config), ("--segments", args.segments),
                        ("--tokenizer", args.tokenizer),
                        ("--train-records", args.train_records)):
        if value is not None:
            out += [flag, str(value)]
    if args.json:
        out += ["--json", str(Path(args.json).absolute())]
    if args.health:
        out.append("--health")
    return out + list(args.overrides)
