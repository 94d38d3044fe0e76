"""Metric trackers: the sinks, besides metrics.jsonl, that a run's metrics records go to.

`tracker: [jsonl, tensorboard, wandb]` in the train config picks them. `jsonl` is metrics.jsonl,
written by `RunWriter.metrics` whatever the list says (the run folder's own record, which
`experiments/` read); the list adds sinks:

- `tensorboard`: event files under RUN/tensorboard/ (tensorboardX: `pip install 'mbc-jax[tensorboard]'`).
- `wandb`: a Weights & Biases run (`pip install 'mbc-jax[wandb]'`), set up by the `wandb.*` keys
  (project, entity, name, group, mode, dir); its id is kept in RUN/wandb/run_id.txt.

Both write local files. With the run folder on a URL (gs://...), TensorBoard writes into a local folder
(`paths.cache_dir` of RUN/tensorboard) and uploads its changed event files into RUN/tensorboard every
`TensorBoard.UPLOAD_SECONDS` and at the end, so a kill loses at most that much of TensorBoard's copy
(metrics.jsonl is the run's record); wandb keeps its local files there too (`wandb.dir` to choose).

Every record goes to every tracker at its own step, its numbers named `train/KEY` (or `eval/KEY` for
checkpoint evaluations). Only process 0 opens trackers. On resume from the checkpoint of step S,
TensorBoard purges what an earlier attempt logged after S (the same lines `RunWriter.rewind` drops
from metrics.jsonl) and wandb continues the same run id.

The optional packages are imported when a tracker is opened (`importlib`), so the package works
without them; a missing one is a UserError naming the package and the extra that installs it.
"""

from __future__ import annotations

import importlib
import secrets
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from mbc_jax import UserError, distributed, paths
from mbc_jax import config as config_lib
from mbc_jax.paths import UrlPath, as_path
from mbc_jax.run_folder import TENSORBOARD, atomic_write

PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}  # tracker -> the module it needs (extra: same name)
WANDB_ID = "wandb/run_id.txt"  # in the run folder: the wandb run a resumed run continues


class Tracker(Protocol):
    def log(self, record: dict, step: int) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a metrics record, named as the trackers show them: eval/KEY for an evaluation
    record, train/KEY otherwise (`step` and flags such as `eval` left out)."""
    prefix = "eval/" if record.get("eval") else "train/"
    return {prefix + k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def _module(tracker: str) -> ModuleType:
    package = PACKAGES[tracker]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(f"tracker: {tracker} needs the {package} package, which is not installed: "
                        f"pip install 'mbc-jax[{tracker}]' (or pip install {package}), or drop {tracker} "
                        "from `tracker`") from None


def check(names: list[str]) -> None:
    """Fails early (before the model loads) when a listed tracker's package is missing."""
    for name in names:
        if name in PACKAGES:
            _module(name)


class TensorBoard:
    """Scalars into event files under RUN/tensorboard/ (a URL run folder: a local mirror, uploaded)."""

    UPLOAD_SECONDS = 120.0

    def __init__(self, run_dir: Path | UrlPath, start: int):
        self.remote = as_path(run_dir) / TENSORBOARD
        url = isinstance(self.remote, UrlPath)
        self.folder = paths.cache_dir(self.remote) if url else self.remote
        self.uploaded: dict | None = {} if url else None
        self.upload_at = time.monotonic() + self.UPLOAD_SECONDS
        earlier = self.remote.is_dir() and any(f.name.startswith("events.") for f in self.remote.iterdir())
        # purge_step: TensorBoard drops the events of steps >= it that earlier files hold. tensorboardX names a
        # file by the second it opened (and overwrites one of the same name): the suffix keeps two apart and
        # sorts them by time, the order TensorBoard reads them in
        self.writer = _module("tensorboard").SummaryWriter(str(self.folder), purge_step=start + 1 if earlier else None,
                                                           filename_suffix=f".{time.time_ns()}")

    def log(self, record: dict, step: int) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()
        if self.uploaded is not None and time.monotonic() >= self.upload_at:
            self._upload()

    def _upload(self) -> None:
        paths.upload(self.folder, self.remote, only_changed=self.uploaded)
        self.upload_at = time.monotonic() + self.UPLOAD_SECONDS

    def close(self) -> None:
        self.writer.close()
        if self.uploaded is not None:
            self._upload()


class Wandb:
    """A wandb run: one per run folder, continued (same id, resume="allow") when the run resumes."""

    def __init__(self, cfg: config_lib.TrainConfig, run_dir: Path | UrlPath, resumed: bool):
        wandb = _module("wandb")
        run_dir, w = as_path(run_dir), cfg.wandb
        folder = Path(w.dir) if w.dir else run_dir if isinstance(run_dir, Path) else paths.cache_dir(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.id = wandb_run_id(run_dir, resumed)
        self.run = wandb.init(project=w.project, entity=w.entity, name=w.name or run_dir.name, group=w.group,
                              mode=w.mode, dir=str(folder), id=self.id, resume="allow",
                              config=config_lib.to_dict(cfg))

    def log(self, record: dict, step: int) -> None:
        self.run.log(scalars(record), step=step)

    def close(self) -> None:
        self.run.finish()


def wandb_run_id(run_dir: Path | UrlPath, resumed: bool) -> str:
    """The id saved in the run folder when the run resumes from a checkpoint; else a new one, saved."""
    path = as_path(run_dir) / WANDB_ID
    if resumed and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    atomic_write(path, run_id + "\n")
    return run_id


def open_trackers(cfg: config_lib.TrainConfig, run_dir: Path, start: int, resumed: bool) -> list[Any]:
    """The trackers `cfg.tracker` lists besides jsonl, opened at step `start` (`resumed`: restored from
    a checkpoint); none on processes other than 0."""
    if not distributed.is_main():
        return []
    opened: list[Any] = []
    try:
        for name in cfg.tracker:
            if name == "tensorboard":
                opened.append(TensorBoard(run_dir, start))
            elif name == "wandb":
                opened.append(Wandb(cfg, run_dir, resumed))
    except BaseException:
        for t in opened:
            t.close()
        raise
    return opened
