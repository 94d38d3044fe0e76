"""From a config to a ready `Trainer`, wherever its model and data come from: the entry point of training.

    trainer = create_trainer(cfg)   # run folder, model, data, optimizer, sampler
    trainer.train()

`model: demo` / `data: demo` are resolved here (the demo's generated files in the run folder's data/, the
pretrained demo base from the cache), so neither the trainer (`mbc_jax.train`) nor the generic set-up
(`mbc_jax.run_setup`) knows of the demo; this module sits above both and above `mbc_jax.demo`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mbc_jax import distributed
from mbc_jax.config import TrainConfig
from mbc_jax.demo import materialize
from mbc_jax.demo.base import demo_base
from mbc_jax.paths import fetch
from mbc_jax.run_folder import DATA
from mbc_jax.run_setup import local_model_folder, set_up
from mbc_jax.train import Trainer


def create_trainer(cfg: TrainConfig, override: bool = False, log: Callable[[str], None] = print,
                   devices: Any = None) -> Trainer:
    """The `Trainer` of `cfg` (`run_setup.set_up`), its model and data resolved by `model_folder`, its mesh
    over `devices` (default: all of this process's)."""
    return set_up(cfg, override, log, model_folder=model_folder, devices=devices)


def model_folder(cfg: TrainConfig, run_dir: Path, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """(folder with config.json [+ weights] [+ tokenizer], has_weights). `model: demo` is the demo base,
    pretrained on the demo world's corpus and cached (built on first use); with `init: random` it is the
    weightless demo folder (the same config and tokenizer), so nothing is pretrained. `model: demo` or
    `data: demo` first writes the demo's files to the run folder's data/."""
    if cfg.model == "demo" or cfg.data == "demo":
        with distributed.main_first("materialize demo"):
            paths = materialize(run_dir / DATA, num_records=cfg.demo_records, seed=0)
        if cfg.model == "demo":
            if cfg.init == "random":
                return fetch(paths["model"]), False  # a URL run folder: a local copy for the tokenizer
            with distributed.main_first("demo base"):
                return demo_base(seed=0, log=log), True
    return local_model_folder(cfg, run_dir, log)
