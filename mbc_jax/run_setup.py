"""A training run set up from its config: the run folder checked, the model loaded, the data tokenized,
the `Trainer` built, and the run folder's config, model and records written.

    trainer = set_up(cfg, model_folder=local_model_folder)   # a model folder or hub id; no demo

`set_up` is told where the model comes from by `model_folder(cfg, run_dir, log) -> (folder, has_weights)`,
called once the run folder has proved usable: `local_model_folder` resolves a local folder or hub id;
`mbc_jax.assemble.create_trainer`, the entry point, passes one that also knows the demo. The demo base's
pretraining (`mbc_jax.demo.base.pretrain`) uses this module directly, so it sits below `mbc_jax.demo`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mbc_jax import UserError, distributed, trackers
from mbc_jax import config as config_lib
from mbc_jax.config import TrainConfig
from mbc_jax.data import Example, Template, load_records, split_train_val, split_trainable, tokenize
from mbc_jax.models import Model, init_model, load_model, load_tokenizer, resolve_model_dir
from mbc_jax.models.hf_io import WEIGHT_FILES
from mbc_jax.paths import as_path, orbax_dir
from mbc_jax.run_folder import RunWriter, data_paths
from mbc_jax.sharding import make_mesh
from mbc_jax.train import RunData, Trainer, model_runtime

ModelFolder = Callable[[TrainConfig, Path, Callable[[str], None]], tuple[Path, bool]]


def local_model_folder(cfg: TrainConfig, run_dir: Path, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """(folder with config.json [+ weights] [+ tokenizer], has_weights) of `cfg.model`: a local folder or a
    Hugging Face hub id (`models.resolve_model_dir`)."""
    src = resolve_model_dir(cfg.model)
    return src, any((src / f).is_file() for f in WEIGHT_FILES)


def set_up(cfg: TrainConfig, override: bool = False, log: Callable[[str], None] = print,
           model_folder: ModelFolder = local_model_folder, devices: Any = None) -> Trainer:
    """The `Trainer` of `cfg`, its run folder written (config.yaml last, once model and data accepted it).
    A run folder made with a different config is refused unless `override`. Its mesh spans `devices`
    (default: all of this process's)."""
    distributed.initialize()  # no-op for one process, and when the CLI already did it
    run_dir = as_path(cfg.out)  # a local folder, or a URL (gs://...: mbc_jax/paths.py)
    orbax_dir(run_dir)  # a URL orbax cannot write fails now, not after the model loaded
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(run_dir)
    saved = writer.saved_config()
    if saved is not None:
        diff = config_lib.differences(config_lib.from_dict(saved, str(run_dir / "config.yaml")), cfg)
        if diff and not override:
            raise UserError(
                f"{run_dir}: this run folder was made with a different config ({'; '.join(diff)}); "
                f"use another `out`, or pass --override to continue it with the new config"
            )
    trackers.check(cfg.tracker)  # a missing optional package fails before the model loads
    model = load_run_model(cfg, *model_folder(cfg, run_dir, log), make_mesh(cfg.mesh, devices), log)
    writer.write_model(model.hf_config, model.tokenizer)  # the run keeps its own copy, for export
    data = load_run_data(cfg, run_dir, model, log)
    writer.write_records({"train": data.train, "val": data.val})
    writer.write_no_target(data.targets.no_target if data.targets else [])
    trainer = Trainer(cfg, run_dir, model, data, log)
    writer.write_config(config_lib.to_dict(cfg))  # last, once the config has proved valid against model and data
    return trainer


def load_run_model(cfg: TrainConfig, model_dir: Path, has_weights: bool, mesh: Any,
                   log: Callable[[str], None] = print) -> Model:
    """The model of `model_dir` with the run's runtime choices: its weights, or random ones (`init`)."""
    runtime = model_runtime(cfg)
    if cfg.init == "pretrained" and not has_weights:
        raise UserError(f"{model_dir}: no weights (init: pretrained); use init=random to start from random weights")
    if has_weights and cfg.init != "random":
        return load_model(str(model_dir), mesh=mesh, **runtime)
    hf_config = json.loads((model_dir / "config.json").read_text())
    log(f"model: random initialization from {model_dir / 'config.json'}")
    return init_model(hf_config, mesh=mesh, seed=cfg.seed, tokenizer=load_tokenizer(model_dir), **runtime)


def load_run_data(cfg: TrainConfig, run_dir: Path, model: Model, log: Callable[[str], None] = print) -> RunData:
    """The run's training and validation records, tokenized with the model's tokenizer and the run's template."""
    if cfg.max_length > model.config.max_position_embeddings:
        raise UserError(
            f"max_length: {cfg.max_length} exceeds the model's {model.config.max_position_embeddings} positions"
        )
    return tokenize_run_data(cfg, *data_paths(cfg, run_dir), model.tokenizer, model.config.vocab_size, log,
                             no_tokenizer=cfg.model)


def tokenize_run_data(cfg: TrainConfig, train_path: str, val_path: str | None, tokenizer: Any,
                      vocab_size: int | None, log: Callable[[str], None] = print,
                      no_tokenizer: str | None = None) -> RunData:
    """Loads and tokenizes the config's records, splits off validation (`val_data` or `val_fraction`) and
    leaves out the training records with no loss target (`split_trainable`): what training draws from, and
    what `mbc-jax plan --tokenizer` counts before any TPU is rented. `no_tokenizer` names the model folder
    when it has no tokenizer (only token-id records load then)."""
    template = Template.from_spec(cfg.template)

    def examples(path: str) -> list[Example]:
        records, report = load_records(path, schema=cfg.schema, fields=cfg.fields, tree=cfg.tree,
                                       tree_filter=cfg.tree_filter)
        if tokenizer is None and report.schema != "tokens":
            raise UserError(f"{no_tokenizer}: the model folder has no tokenizer; needed for {report.schema!r} records")
        out, tok_report = tokenize(records, tokenizer, template, cfg.max_length, vocab_size=vocab_size)
        log(report.summary())
        log(tok_report.summary())
        return out

    train = examples(train_path)
    if val_path:
        val = examples(val_path)
    elif cfg.val_fraction:
        train, val = split_train_val(train, cfg.val_fraction, seed=cfg.seed)
    else:
        val = []
    train, targets = split_trainable(train, cfg.loss_on)  # a record with nothing to train is never drawn
    if targets.no_target or targets.cut_response:
        log(targets.summary())
    if not train:
        raise UserError(f"loss_on: {cfg.loss_on}, but no training record has a {cfg.loss_on} target")
    if cfg.batch_size > len(train):
        raise UserError(f"batch_size: {cfg.batch_size} is larger than the {len(train)} training records")
    return RunData(train, val, targets)
