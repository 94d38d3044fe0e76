"""Training configuration: a YAML file plus `key=value` overrides, validated.

Nested keys use dots (`mbc.k=50`). An unknown key is an error naming the closest valid keys; a
value of the wrong type or out of range is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from mbc_jax import UserError


@dataclasses.dataclass
class MBCConfig:
    k: int = 0  # re-score every k steps; 0 = once per epoch-equivalent (N / batch_size steps)
    metric: str = "loss"  # "loss" (perplexity over the loss's targets), "full" or "response" perplexity
    power: float = 1.0  # weights proportional to perplexity ** power (0 = uniform, larger = sharper)
    floor: float = 0.0  # Algorithm 1 has none. Extension: mix in floor / N of uniform probability, to damp
    # the curriculum (perplexity is at least 1, so no record reaches zero probability even without it)
    refresh: str = "full"  # "full": re-score all records every k steps (the paper's algorithm);
    # "incremental": update drawn records from train-step losses, re-score only the stalest part
    refresh_fraction: float = 0.1  # incremental: share of records re-scored every k steps


@dataclasses.dataclass
class WandbConfig:  # used when `tracker` lists wandb (mbc_jax/trackers.py)
    project: str = "mbc-jax"
    entity: str | None = None  # None: the account's default entity
    name: str | None = None  # None: the run folder's name
    group: str | None = None
    mode: str | None = None  # "online", "offline", "disabled"; None: wandb's default (honours WANDB_MODE)
    dir: str | None = None  # where wandb keeps its files (DIR/wandb/); None: the run folder


@dataclasses.dataclass
class TrainConfig:
    out: str = "runs/run"
    model: str = "demo"  # checkpoint folder / hub id, or "demo" (tiny GPT-Neo of the demo)
    init: str = "auto"  # "auto" (weights if the folder has them, else random), "pretrained", "random"
    data: str = "demo"  # records file / hf:NAME, or "demo" (the generated demonstration suite)
    val_data: str | None = None  # separate validation file; else val_fraction of `data`
    val_fraction: float = 0.1
    schema: str = "auto"
    fields: str | None = None  # column mapping TARGET=COLUMN,... (YAML: a mapping too), see mbc_jax/data/formats.py
    tree: str = "best"  # conversation trees: "best" (top-ranked reply per turn) or "all" (every path)
    tree_filter: str = "deleted,failed_review"  # conversation-tree messages left out (see mbc_jax/data/trees.py)
    template: str | None = None  # None: the paper's Human:/Assistant:; a template file; "chat": the tokenizer's own
    max_length: int = 256
    loss_on: str = "response"  # "response" or "full" (dialogue)
    sampler: str = "mbc"  # "mbc" or "uniform"
    mbc: MBCConfig = dataclasses.field(default_factory=MBCConfig)
    batch_size: int = 8  # records per step (per micro-step with grad_accum)
    epochs: float = 15.0  # used when steps is 0: steps = ceil(epochs * N / (batch_size * grad_accum))
    steps: int = 0
    learning_rate: float = 5e-5
    warmup_steps: int = 0
    end_learning_rate: float = 0.0  # linear decay to this
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0  # global-norm clipping; 0 = off
    grad_accum: int = 1
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (params stay float32)
    param_dtype: str = "float32"
    remat: str = "none"  # "none", "full", "dots"
    dropout: float | None = None  # training dropout: None = the model config.json's rates; a number sets all
    mesh: str | None = None  # "D,F,T"
    seed: int = 0
    checkpoint_every: int = 0  # 0 = once per epoch-equivalent
    keep_checkpoints: int = 3  # full train states (resume): the latest N; step 0 and the last step are always kept too
    save_params: str = "snapshots"  # "snapshots": params alone, in the compute dtype, at every checkpoint step,
    # never deleted (params/<step>/, what the analyses export); "none": only the full checkpoints above
    log_every: int = 10
    # where metrics records go: metrics.jsonl is always written (the experiments read it); tensorboard and
    # wandb add sinks (mbc_jax/trackers.py)
    tracker: list[str] = dataclasses.field(default_factory=lambda: ["jsonl"])
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
    score_tokens_per_batch: int = 4096
    track_memorization: bool = True  # score all records at every checkpoint
    peak_tflops: float = 0.0  # per device, for MFU; 0 = a table by device kind (CPU: measured)
    demo_records: int = 600


CHOICES = {
    "init": ("auto", "pretrained", "random"),
    "loss_on": ("response", "full"),
    "tree": ("best", "all"),
    "sampler": ("mbc", "uniform"),
    "mbc.metric": ("loss", "full", "response"),
    "mbc.refresh": ("full", "incremental"),
    "dtype": ("float32", "bfloat16"),
    "param_dtype": ("float32", "bfloat16"),
    "remat": ("none", "full", "dots"),
    "save_params": ("snapshots", "none"),
}
POSITIVE = ("learning_rate", "batch_size", "max_length", "grad_accum", "log_every", "keep_checkpoints",
            "score_tokens_per_batch", "demo_records")
NON_NEGATIVE = ("steps", "epochs", "warmup_steps", "weight_decay", "grad_clip", "checkpoint_every", "mbc.k",
                "mbc.power", "mbc.floor", "end_learning_rate", "peak_tflops")
TRACKERS = ("jsonl", "tensorboard", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
SECTIONS = {"mbc": MBCConfig, "wandb": WandbConfig}  # nested keys: `mbc.k`, `wandb.project`
# Keys a resumed run may change without `--override`: they do not change what is computed.
# save_params: switching it on mid-run leaves the earlier steps without snapshots (the analyses then name them).
RESUME_SAFE = ("log_every", "keep_checkpoints", "out", "peak_tflops", "score_tokens_per_batch", "save_params",
               "tracker", *(f"wandb.{f.name}" for f in dataclasses.fields(WandbConfig)))


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def all_keys() -> list[str]:
    keys = []
    for name, f in _fields(TrainConfig).items():
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += [f"{name}.{sub}" for sub in _fields(f.default_factory)]
        else:
            keys.append(name)
    return keys


def _unknown(key: str, where: str) -> UserError:
    close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(all_keys())}"
    return UserError(f"{where}: unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any, kind: Any, where: str) -> Any:
    kind = str(kind)
    if kind.startswith("list"):  # a list of names: a YAML list, or one string "a,b"
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise UserError(f"{where}: {key}: expected a list of names, got {value!r}")
        return items
    if value is None:
        if "None" in kind:
            return None
        raise UserError(f"{where}: {key}: may not be empty")
    try:
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {key}: expected {kind.split(' ')[0]}, got {value!r}") from None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in SECTIONS:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def build(values: dict[str, Any], where: str, lines: dict[str, int] | None = None) -> TrainConfig:
    """A validated TrainConfig from flat dotted keys; `lines`: each key's line in the file `where`."""
    cfg = TrainConfig()
    top = _fields(TrainConfig)
    for key, value in values.items():
        at = f"{where}:{lines[key]}" if lines and key in lines else where
        section, _, sub = key.partition(".")
        if section in SECTIONS and sub:
            fields = _fields(SECTIONS[section])
            if sub not in fields:
                raise _unknown(key, at)
            setattr(getattr(cfg, section), sub, _coerce(key, value, fields[sub].type, at))
        elif key in SECTIONS:
            raise UserError(f"{at}: {key}: expected a mapping of {key}.* keys, got {value!r}")
        elif key in top:
            if key == "fields" and isinstance(value, dict):  # fields: {instruction: question, ...}
                value = ",".join(f"{k}={v}" for k, v in value.items())
            setattr(cfg, key, _coerce(key, value, top[key].type, at))
        else:
            raise _unknown(key, at)
        if key == "tracker":
            check_trackers(cfg.tracker, at)
    validate(cfg, where)
    return cfg


def get(cfg: TrainConfig, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def check_trackers(names: list[str], where: str) -> None:
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"{where}: tracker: {name!r} is not a tracker; valid: {', '.join(TRACKERS)}")
        if names.count(name) > 1:
            raise UserError(f"{where}: tracker: {name!r} is listed twice")


def validate(cfg: TrainConfig, where: str = "config") -> None:
    check_trackers(cfg.tracker, where)
    if cfg.wandb.mode is not None and cfg.wandb.mode not in WANDB_MODES:
        raise UserError(f"{where}: wandb.mode: {cfg.wandb.mode!r} is not one of {', '.join(WANDB_MODES)} "
                        "(or empty for wandb's default)")
    for key, choices in CHOICES.items():
        if get(cfg, key) not in choices:
            raise UserError(f"{where}: {key}: {get(cfg, key)!r} is not one of {', '.join(choices)}")
    for key in POSITIVE:
        if not get(cfg, key) > 0:
            raise UserError(f"{where}: {key}: must be positive, got {get(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if get(cfg, key) < 0:
            raise UserError(f"{where}: {key}: must not be negative, got {get(cfg, key)!r}")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"{where}: val_fraction: must be in [0, 1), got {cfg.val_fraction}")
    if not 0 < cfg.mbc.refresh_fraction <= 1:
        raise UserError(f"{where}: mbc.refresh_fraction: must be in (0, 1], got {cfg.mbc.refresh_fraction}")
    if cfg.dropout is not None and not 0 <= cfg.dropout < 1:
        raise UserError(f"{where}: dropout: must be in [0, 1) (or empty for the model's own rates), got {cfg.dropout}")
    if cfg.mbc.floor > 1:
        raise UserError(f"{where}: mbc.floor: must be at most 1 (a share of the uniform probability)")
    if cfg.steps == 0 and cfg.epochs == 0:
        raise UserError(f"{where}: set steps or epochs")


def load(path: str | None, overrides: list[str]) -> TrainConfig:
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a mapping of config keys")
        values.update(_flatten(raw))
        lines = _key_lines(yaml.compose(p.read_text()))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        key, _, text = item.partition("=")
        values[key.strip()] = yaml.safe_load(text) if text.strip() else None
        lines.pop(key.strip(), None)  # an override's error names the override, not the file's line
    return build(values, path or "overrides", lines)


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """{dotted key: 1-based line} of a composed YAML mapping (nested sections included)."""
    out: dict[str, int] = {}
    for k, v in node.value if isinstance(node, yaml.MappingNode) else []:
        key = f"{prefix}{k.value}"
        out[key] = k.start_mark.line + 1
        if isinstance(v, yaml.MappingNode) and key in SECTIONS:
            out.update(_key_lines(v, key + "."))
    return out


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, where: str) -> TrainConfig:
    return build(_flatten(d), where)


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    fa, fb = _flatten(to_dict(a)), _flatten(to_dict(b))
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and k not in RESUME_SAFE]
