"""The demo's pretrained base: the tiny GPT-Neo pretrained on the world's corpus, cached per seed and code version.

    folder = demo_base(seed=0)   # a Hugging Face checkpoint folder; built on first use (a few CPU minutes)

`build_base` materializes the world (corpus and tokenizer, `materialize`), pretrains the shipped
config from random weights with our own `Trainer` (built by `mbc_jax.run_setup.set_up`; text schema,
`loss_on: full`, uniform sampling, `PRETRAIN` below, one device so the result does not depend on the
machine's device count) and exports the last step as a normal HF folder (`config.json`,
`model.safetensors`, tokenizer files) plus `pretrain.json` (what was trained, the loss and the wall
time) and `pretrain_metrics.jsonl`.
Training is a pure function of the seed, so two builds give the same weights (on CPU). `pretrain` is that
recipe for any weightless folder and text corpus (experiments/tiny_data.py pretrains a base on real data with it).

`demo_base` keeps it in `cache_root()/demo-base/<seed>-<code version>`, where the code version
hashes the package version and every file of `mbc_jax/demo/` (the world, the corpus, the tokenizer,
the model config, this recipe): a change to any of them builds a new base; a missing folder is
rebuilt. A build writes into a `.partial-<pid>` folder next to the target and renames it into
place, so a reader never sees half a base, and a killed build leaves only a partial folder that the
next build replaces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import jax

from mbc_jax import UserError, __version__
from mbc_jax import config as config_lib
from mbc_jax.checkpoints import export_run
from mbc_jax.demo import materialize
from mbc_jax.run_setup import set_up

CACHE_ENV = "MBC_JAX_CACHE"  # overrides the cache folder ($XDG_CACHE_HOME/mbc-jax, else ~/.cache/mbc-jax)
WEIGHTS = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """How the base is pretrained (Trainer keys; the rest are TrainConfig defaults)."""

    steps: int = 400
    batch_size: int = 16  # corpus documents per step
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    end_learning_rate: float = 3e-4
    weight_decay: float = 0.1  # keeps the tiny model from growing overconfident on its small corpus

    def overrides(self) -> list[str]:
        return [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)]


PRETRAIN = PretrainSpec()


def cache_root() -> Path:
    """Where mbc-jax keeps what it builds: $MBC_JAX_CACHE, else $XDG_CACHE_HOME/mbc-jax, else ~/.cache/mbc-jax."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mbc-jax"


def code_version() -> str:
    """12 hex digits of sha256 over the package version and every file of mbc_jax/demo/ (name and bytes)."""
    h = hashlib.sha256(__version__.encode())
    for f in sorted(Path(__file__).parent.iterdir()):
        if f.is_file() and f.suffix in (".py", ".json"):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def base_dir(seed: int = 0, spec: PretrainSpec = PRETRAIN) -> Path:
    """The cache folder of the base of world `seed` (a non-default `spec` gets its own folder)."""
    name = f"{seed}-{code_version()}"
    if spec != PRETRAIN:
        name += "-" + hashlib.sha256(repr(spec).encode()).hexdigest()[:8]
    return cache_root() / "demo-base" / name


def is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", WEIGHTS, "tokenizer.json", "pretrain.json"))


def demo_base(seed: int = 0, spec: PretrainSpec = PRETRAIN, log: Callable[[str], None] = print) -> Path:
    """The pretrained base of world `seed`: the cached folder, built first when it is missing."""
    target = base_dir(seed, spec)
    if is_complete(target):
        return target
    if jax.process_count() > 1:
        raise UserError(f"{target}: the demo base is not built on this host; build it once per host with "
                        f"`python -m mbc_jax.demo.base --seed {seed}` (one process), then rerun")
    log(f"demo base: pretraining the tiny GPT-Neo on the world's corpus (first use; cached in {target})")
    return build_base(target, seed, spec, log)


def build_base(target: Path, seed: int = 0, spec: PretrainSpec = PRETRAIN,
               log: Callable[[str], None] = print) -> Path:
    """Pretrain the base of world `seed` and put it at `target` (atomically); returns `target`."""
    target = Path(target)
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    world = materialize(work / "world", seed=seed, num_valid=0)
    info = {
        "what": "tiny GPT-Neo pretrained on the demo world's generated corpus (mbc_jax.demo.corpus)",
        "seed": seed, "code_version": code_version(),
        "corpus_documents": len(world["corpus"].read_text().splitlines()),
        "corpus_sha256": hashlib.sha256(world["corpus"].read_bytes()).hexdigest(),
    }
    info = pretrain(target, work, world["model"], world["corpus"], info, seed=seed, spec=spec, log=log)
    log(f"demo base: pretrained in {info['wall_seconds']:.0f}s, loss {info['first_loss']:.3f} -> "
        f"{info['final_loss']:.3f} ({target})")
    return target


def pretrain(target: Path, work: Path, model_dir: Path, corpus: Path, info: dict, *, seed: int = 0,
             spec: PretrainSpec = PRETRAIN, max_length: int = 256, log: Callable[[str], None] = print) -> dict:
    """Pretrain the weightless checkpoint folder `model_dir` (config.json + tokenizer) from random weights on the
    text-schema JSONL `corpus` with our own `Trainer` (`loss_on: full`, uniform sampling, one device), building
    in `work` (removed after), and move the exported HF folder to `target` atomically. Writes `pretrain.json`
    (`info` plus the spec, tokens, epochs, first / final loss and wall time, returned) and
    `pretrain_metrics.jsonl` next to the weights."""
    run = work / "run"
    cfg = config_lib.load(None, [
        f"out={run}", f"model={model_dir}", "init=random", f"data={corpus}", "schema=text",
        "loss_on=full", "sampler=uniform", "val_fraction=0", "track_memorization=false", f"max_length={max_length}",
        f"checkpoint_every={spec.steps}", "keep_checkpoints=1", "log_every=50", f"seed={seed}", "mesh=1,1,1",
        *spec.overrides()])
    t0 = time.perf_counter()
    summary = set_up(cfg, log=lambda m: log(f"  pretrain: {m}")).train(desc="pretrain base")
    seconds = time.perf_counter() - t0
    model = work / "model"
    export_run(run, model)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [x["loss_mean"] for x in lines if "loss_mean" in x]
    (model / "pretrain_metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    info = {
        **info, "spec": dataclasses.asdict(spec), "max_length": max_length,
        "tokens_trained": summary["tokens"], "epochs": summary["epochs"],
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "wall_seconds": round(seconds, 1),
    }
    (model / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(model, target)
    except OSError:
        if not is_complete(target):  # not another build's finished base: a leftover; replace it
            shutil.rmtree(target, ignore_errors=True)
            os.replace(model, target)
    shutil.rmtree(work, ignore_errors=True)
    return info


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mbc_jax.demo.base", description="build (or find) the demo base")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(demo_base(args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
