"""`mbc-jax plan --health`: MBC's sampling health at step 0, from one scoring pass of the config's data.

Issue 29: a run whose MBC weights collapse onto a few records (one surprising record holding most of the
probability) should show it before a TPU is rented. This builds the run exactly as `mbc-jax train` does
(`assemble.create_trainer`, in a temporary run folder, on the plan's devices): the config's model weights
(the demo base, `init`, a local folder or hub id), its data, the trainer's scorer and sampler. Then it takes
the trainer's own step-0 refresh (`Trainer.refresh`: one scoring pass over the training records, the
perplexity over the positions the sampler weighs by, the weights with the config's `mbc.power` and
`mbc.floor`) and reports what the trainer writes to mbc_health.jsonl at step 0 and the warning line it prints
(`train.health_warning`). A uniform sampler draws every record equally: the health does not apply.

The pass runs in the plan's own process: the one whose CPU devices the plan uses (`plan._cpu_devices`), or
the fresh process the plan starts for them; it never changes JAX's configuration.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def step0_health(cfg: Any, devices: list) -> tuple[dict, dict | None]:
    """(the step-0 health of `cfg`'s MBC weights, the data summary of the records it scored (`data_summary`),
    or None for a uniform sampler, which loads nothing). The set-up's log goes to stderr."""
    if cfg.sampler != "mbc":
        return {"applies": False, "sampler": cfg.sampler}, None
    from mbc_jax.assemble import create_trainer

    with tempfile.TemporaryDirectory(prefix="mbc-plan-health-") as tmp:
        run_cfg = dataclasses.replace(cfg, out=str(Path(tmp) / "run"), tracker=[])  # nothing is tracked here
        trainer = create_trainer(run_cfg, log=lambda m: print(m, file=sys.stderr), devices=devices)
        t0 = time.perf_counter()
        h = trainer.refresh(0, trainer.model.params)
        seconds = time.perf_counter() - t0
    train, sampler = trainer.data.train, trainer.sampler
    p = sampler.probabilities()
    heaviest = [{"id": train[i].id, "weight": float(p[i]), "perplexity": float(sampler.perplexity[i]),
                 "response_tokens": int(train[i].response_tokens)} for i in h["heaviest"]]
    health = {"applies": True, "sampler": "mbc", "records": len(train),
              "perplexity_over": "response" if sampler.response else "full dialogue",
              "power": sampler.power, "floor": sampler.floor,
              **{k: h[k] for k in ("ess", "ess_share", "max_weight", "top1pct_share")},
              "heaviest": heaviest, "warning": h["warning"], "score_seconds": round(seconds, 1)}
    return health, data_summary(trainer.data)


def data_summary(data: Any) -> dict:
    """A run's data (`train.RunData`) as the plan reports it: records, and those left out or cut by category."""
    return {"train_records": len(data.train), "val_records": len(data.val), **data.targets.as_dict()}


def health_report(health: dict | None) -> list[str]:
    """The health section of the plan's report."""
    from mbc_jax.samplers import ESS_WARN_SHARE

    if health is None:
        return []
    if not health["applies"]:
        return ["", f"MBC health: does not apply (sampler: {health['sampler']} draws every record equally)"]
    lines = ["", f"MBC health at step 0 (one scoring pass of the {health['records']} training records, "
                 f"{health['score_seconds']} s; perplexity over the {health['perplexity_over']}, power "
                 f"{health['power']:g}, floor {health['floor']:g}):",
             f"  effective sample size {health['ess']:.1f} of {health['records']} records "
             f"({health['ess_share']:.1%}); largest weight {health['max_weight']:.4f}; "
             f"top 1% of records hold {health['top1pct_share']:.1%}"]
    if health["warning"]:
        return lines + [f"  {health['warning']}"]
    return lines + [f"  not concentrated (the trainer warns below {ESS_WARN_SHARE:.0%} of N)"]
