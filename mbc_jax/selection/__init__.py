"""Checkpoint selection, automated: the paper's hand-picked "best checkpoint on a 50-example
development set", done by the judge (`mbc-jax select`, `mbc_jax.commands.select`).

- `dev`: the dev prompts and where they come from (the run's validation split, or --dev-data).
- `schedule`: which checkpoint pairs are compared within the bound on judge calls.
- `tournament`: the games, judged by `mbc_jax.judge` (the one place selection calls the judge).
- `select`: generation per checkpoint, the Bradley-Terry ranking (`mbc_jax.judge.bradley_terry`),
  and the files written into RUN/selection/.
"""

from mbc_jax.selection.dev import DevSet, dev_set
from mbc_jax.selection.schedule import Schedule, schedule
from mbc_jax.selection.select import (
    DEFAULT_DEV,
    DEFAULT_MAX_CALLS,
    SELECTION,
    SelectConfig,
    answers_at_step,
    candidate_steps,
    loadable_steps,
    read_selection,
    select_checkpoint,
)

__all__ = [
    "DEFAULT_DEV", "DEFAULT_MAX_CALLS", "SELECTION", "DevSet", "SelectConfig", "Schedule", "answers_at_step",
    "candidate_steps", "dev_set", "loadable_steps", "read_selection", "schedule", "select_checkpoint",
]
