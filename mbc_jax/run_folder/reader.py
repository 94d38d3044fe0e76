"""Reading a run folder (`RunFolder`): its config, records, memorization snapshots, weights, sampling and
metrics. Re-tokenizing the data the run trained on is `TrainingData`'s job (training_data.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from mbc_jax import UserError
from mbc_jax.formatting import fmt_lr
from mbc_jax.paths import UrlPath, as_path
from mbc_jax.run_folder.files import (
    CHECKPOINTS,
    CONFIG,
    MEMORIZATION,
    METRICS,
    PARAMS,
    RECORDS,
    SAMPLING,
    SUMMARY,
    read_csv,
    saved_steps,
    select,
    snapshot_name,
    weight_sources,
)
from mbc_jax.run_folder.training_data import TrainingData


@dataclasses.dataclass
class RunFolder(TrainingData):
    """A run folder as written by `mbc-jax train` (read-only); `TrainingData` adds its data, re-tokenized."""

    path: Path | UrlPath
    config: dict
    records: dict[str, np.ndarray]
    label: str = ""
    _mem: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path | UrlPath, label: str | None = None) -> RunFolder:
        path = as_path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such run folder (pass the `out` folder of `mbc-jax train`)")
        cfg_path = path / CONFIG
        if not cfg_path.is_file():
            raise UserError(f"{cfg_path}: missing; {path} is not a run folder written by `mbc-jax train`")
        config = yaml.safe_load(cfg_path.read_text()) or {}
        rec_path = path / RECORDS
        if not rec_path.is_file():
            raise UserError(f"{rec_path}: missing; the run never got past loading its data: rerun `mbc-jax train`")
        run = cls(path, config, read_csv(rec_path))
        run.label = label or run.default_label()
        if not run.memorization_steps():
            raise UserError(f"{path / MEMORIZATION}: no step_*.csv files; the run has not reached its first "
                            "checkpoint (or track_memorization is false)")
        return run

    # -- config facts
    @property
    def sampler(self) -> str:
        return str(self.config.get("sampler", "?"))

    @property
    def learning_rate(self) -> float:
        return float(self.config.get("learning_rate", math.nan))

    @property
    def lr_label(self) -> str:
        return f"lr {fmt_lr(self.learning_rate)}"

    def default_label(self) -> str:
        name = {"mbc": "MBC", "uniform": "baseline"}.get(self.sampler, self.sampler)
        return f"{name} {self.lr_label}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.label).strip("_") or self.path.name

    @property
    def n_train(self) -> int:
        return int((self.records["split"] == "train").sum())

    @property
    def epoch_steps(self) -> int:
        """Steps per epoch-equivalent, as the trainer counts them (ceil(N / batch_size))."""
        return max(1, math.ceil(self.n_train / int(self.config.get("batch_size", 1))))

    # -- memorization snapshots
    def memorization_steps(self) -> list[int]:
        d = self.path / MEMORIZATION
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for f in d.iterdir() if (m := re.fullmatch(r"step_(\d+)\.csv", f.name)))

    def memorization(self, step: int, split: str | None = None) -> dict[str, np.ndarray]:
        if step not in self._mem:
            path = self.path / MEMORIZATION / snapshot_name(step)
            if not path.is_file():
                have = ", ".join(map(str, self.memorization_steps()))
                raise UserError(f"{path}: no memorization snapshot of step {step} (have: {have})")
            self._mem[step] = read_csv(path)
        table = self._mem[step]
        return table if split is None else select(table, table["split"] == split)

    def record_matrix(self, column: str, split: str = "train", steps: Sequence[int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps [S], record index [N], values [S, N]): one column of every snapshot, records in
        records.csv order (so row s, column n is record n's value at steps[s])."""
        steps = list(self.memorization_steps() if steps is None else steps)
        index = self.records["index"][self.records["split"] == split]
        pos = {int(i): n for n, i in enumerate(index)}
        out = np.full((len(steps), len(index)), np.nan)
        for s, step in enumerate(steps):
            t = self.memorization(step, split)
            for i, v in zip(t["index"], t[column]):
                out[s, pos[int(i)]] = v
        return np.asarray(steps, np.int64), index, out

    def first_last_snapshots(self, first_step: int | None = None) -> dict[str, int]:
        """{"first": step, "last": step} among the memorization snapshots: "first" is the first one
        after training began (step > 0) unless `first_step` names another."""
        steps = self.memorization_steps()
        if first_step is not None:
            if first_step not in steps:
                raise UserError(f"{self.path / MEMORIZATION}: no snapshot of step {first_step} "
                                f"(have: {', '.join(map(str, steps))})")
            return {"first": first_step, "last": steps[-1]}
        after = [s for s in steps if s > 0]
        return {"first": after[0] if after else steps[0], "last": steps[-1]}

    # -- weights: full checkpoints (resume keeps the last N) and parameters-only snapshots (all kept)
    def full_checkpoint_steps(self) -> list[int]:
        """Steps of the complete full train states in checkpoints/ (what resume reads)."""
        return saved_steps(self.path / CHECKPOINTS)

    def param_snapshot_steps(self) -> list[int]:
        """Steps of the complete parameters-only snapshots in params/."""
        return saved_steps(self.path / PARAMS)

    def checkpoint_steps(self) -> list[int]:
        """Steps with loadable weights: param snapshots and full checkpoints together (complete ones only);
        `mbc_jax.checkpoints.export_run` exports any of them."""
        return list(weight_sources(self.path))

    def first_last_checkpoints(self, first_step: int | None = None, log: Callable[[str], None] | None = None
                               ) -> dict[str, int]:
        """{"first": step, "last": step}: the first memorization snapshot after training began (step > 0),
        or `first_step` when given, and the last snapshot. Both must have weights (a param snapshot or a
        full checkpoint): a missing one is a UserError naming it, never another step in its place.
        `log` is told where each step's weights come from."""
        mem = self.memorization_steps()
        after = [s for s in mem if s > 0]
        wanted = {"first": first_step if first_step is not None else (after[0] if after else mem[0]),
                  "last": mem[-1]}
        sources = weight_sources(self.path)
        for which, step in wanted.items():
            if step not in sources:
                have = ", ".join(map(str, sources)) or "none"
                raise UserError(
                    f"{self.path / PARAMS / str(step)}: no weights of step {step} (the {which} checkpoint): no param "
                    f"snapshot and no full checkpoint of that step (steps with weights: {have}). Param snapshots are "
                    "written at every checkpoint step unless save_params is none, and never deleted by the run; "
                    "restore the folder, or retrain with save_params: snapshots")
        if log:
            log(f"{self.path}: " + ", ".join(f"{which} checkpoint: step {step} ({sources[step].parent.name}/{step})"
                                             for which, step in wanted.items()))
        return wanted

    # -- sampling, metrics
    def sampling(self) -> dict[str, np.ndarray]:
        path = self.path / SAMPLING
        if path.is_file():
            return read_csv(path)
        raise UserError(f"{path}: missing; the run has not finished (sampling.csv is written at the end)")

    def metrics(self) -> list[dict]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        out = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{lineno}: not valid JSON") from None
        return out

    def summary(self) -> dict | None:
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else None
