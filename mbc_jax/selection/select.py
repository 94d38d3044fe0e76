"""Checkpoint selection end to end: dev prompts, answers of every checkpoint, judged games, the fit.

    result = select_checkpoint("runs/mbc", SelectConfig(dev=50), JudgeConfig(), base_url=URL)
    result["chosen_step"]

Writes into OUT (default RUN/selection/): `selection.json` (the chosen step, the ranking, the dev
set and where it came from, the pair schedule, the judge and its calls), `ranking.csv` (step,
strength, CI, P(top), wins / ties / losses), `games.jsonl` (every game with the judge's verdicts),
`answers/step_<N>.jsonl` (each checkpoint's answers to the dev prompts, reused by a rerun with the
same settings) and `judge_cache/` (every judge reply; a rerun pays for no judgment twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mbc_jax import UserError
from mbc_jax.answers_file import answer_rows, read_meta, write_answers
from mbc_jax.checkpoints import export_run
from mbc_jax.generate import DEFAULT_MAX_NEW_TOKENS, AnswerProgress, SamplingConfig, answer_records
from mbc_jax.judge.bradley_terry import DEFAULT_RIDGE, rank, tables
from mbc_jax.judge.client import JudgeConfig, make_judge
from mbc_jax.models import load_model
from mbc_jax.run_folder import CONFIG, RunFolder, atomic_write, write_csv
from mbc_jax.selection import tournament
from mbc_jax.selection.dev import dev_set
from mbc_jax.selection.schedule import schedule
from mbc_jax.sharding import make_mesh

SELECTION = "selection"
DEFAULT_DEV = 50  # the paper's development set
DEFAULT_MAX_CALLS = 2000
RANKING_COLUMNS = ("rank", "step", "strength", "ci_low", "ci_high", "p_top", "wins", "ties", "losses", "games",
                   "chosen")
TIES = "a tie counts as half a win for each checkpoint (no Davidson tie parameter)"


@dataclasses.dataclass
class SelectConfig:
    """What `mbc-jax select` does besides judging (generation follows the paper's settings)."""

    dev: int = DEFAULT_DEV
    dev_data: str | None = None
    seed: int = 0  # dev sample, pair sample, generation and bootstrap
    steps: Sequence[int] | None = None  # default: every loadable checkpoint after step 0
    max_calls: int = DEFAULT_MAX_CALLS
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 32
    mesh: str | None = None
    dtype: str = "float32"
    n_boot: int = 1000
    ridge: float = DEFAULT_RIDGE


def loadable_steps(run: RunFolder) -> list[int]:
    """The steps whose model `export_run` can write: param snapshots and full checkpoints."""
    return run.checkpoint_steps()


def candidate_steps(run: RunFolder, steps: Sequence[int] | None) -> list[int]:
    """`steps` (each must be loadable), else every loadable step after 0 (step 0 is the model before SFT)."""
    have = loadable_steps(run)
    if steps:
        missing = sorted(set(steps) - set(have))
        if missing:
            raise UserError(f"{run.path / 'checkpoints'}: no checkpoint of step(s) {', '.join(map(str, missing))} "
                            f"(loadable: {', '.join(map(str, have)) or 'none'})")
        return sorted(set(steps))
    after = [s for s in have if s > 0]
    if not after:
        raise UserError(f"{run.path / 'checkpoints'}: no checkpoint after step 0 to select from "
                        f"(loadable: {', '.join(map(str, have)) or 'none'})")
    return after


@contextlib.contextmanager
def step_model(run: RunFolder, step: int, mesh: str | None = None, dtype: str = "float32") -> Iterator:
    """The run's model at `step`, exported to a temporary folder (removed afterwards) and loaded."""
    tmp = Path(tempfile.mkdtemp(prefix="mbc-select-"))
    try:
        with warnings.catch_warnings():  # orbax: "sharding info not provided" (restored on one device)
            warnings.simplefilter("ignore", UserWarning)
            export_run(run.path, tmp / "model", step)
        yield load_model(str(tmp / "model"), mesh=make_mesh(mesh), dtype=dtype)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def answers_at_step(run: RunFolder, step: int, records: Sequence, path: Path, *, sampling: SamplingConfig, seed: int,
                    batch_size: int = 32, mesh: str | None = None, dtype: str = "float32",
                    log: Callable[[str], None] = lambda m: None) -> list[dict]:
    """The answer lines of checkpoint `step` to `records` (as `mbc-jax generate` writes them), read from
    `path` when an earlier call wrote them with the same settings, else generated and written there."""
    meta = {"run_config_sha256": hashlib.sha256((run.path / CONFIG).read_bytes()).hexdigest(), "step": step,
            "ids": [str(r.id) for r in records], "sampling": dataclasses.asdict(sampling), "seed": seed,
            "dtype": dtype, "template": run.template().to_dict()}
    if path.is_file() and read_meta(path) == meta:
        return answer_rows(path)
    t0 = time.perf_counter()
    with step_model(run, step, mesh, dtype) as model, AnswerProgress(len(records), f"select: step {step}") as bar:
        answers = answer_records(model, records, sampling, run.template(), seed=seed, batch_size=batch_size,
                                 on_batch=bar)
    write_answers(path, answers.rows, meta)
    log(f"select: step {step}: answered {len(records)} dev prompts ({answers.summary['tokens']} tokens, "
        f"{time.perf_counter() - t0:.0f}s)")
    return answers.rows


def select_checkpoint(run_dir: str | Path, config: SelectConfig | None = None, judge_config: JudgeConfig | None = None,
                      *, out: str | Path | None = None, base_url: str | None = None,
                      cache_dir: str | Path | None = None, template: str | Path | None = None, progress: bool = True,
                      sleep: Callable[[float], None] | None = None,
                      log: Callable[[str], None] = lambda m: None) -> dict:
    """Rank the run's checkpoints with the judge on dev prompts and choose the strongest (module docstring)."""
    config = config or SelectConfig()
    judge_config = judge_config or JudgeConfig()
    for name in ("max_calls", "max_new_tokens", "batch_size"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.ridge <= 0:
        raise UserError(f"--ridge must be > 0, got {config.ridge} (it keeps the fit finite when a checkpoint wins "
                        "every game)")
    run = RunFolder.open(run_dir)
    out = Path(out) if out is not None else run.path / SELECTION
    steps = candidate_steps(run, config.steps)
    dev = dev_set(run, config.dev, config.seed, config.dev_data)
    log(f"select: {len(steps)} checkpoints ({', '.join(map(str, steps))}); dev prompts: {dev.description}")
    plan = schedule(len(steps), len(dev.records), config.max_calls, tournament.CALLS_PER_JUDGMENT, config.seed)
    log(f"select: {plan.description}: at most {plan.calls} judge calls (round robin: {plan.round_robin_calls}; "
        f"--max-calls {config.max_calls})")
    judge = (make_judge(judge_config, base_url, cache_dir if cache_dir is not None else out / "judge_cache",
                                   template, sleep) if plan.pairs else None)  # endpoint checked before generating
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens).validate()
    answers = {}
    for step in steps:
        rows = answers_at_step(run, step, dev.records, out / "answers" / f"step_{step}.jsonl", sampling=sampling,
                               seed=config.seed, batch_size=config.batch_size, mesh=config.mesh, dtype=config.dtype,
                               log=log)
        answers[step] = {str(r["id"]): r for r in rows}
    t0 = time.perf_counter()
    games = tournament.play(judge, steps, answers, plan.pairs, dev.ids, progress=progress)
    valid = [g for g in games if g["outcome"] is not None]
    pos, group = {s: k for k, s in enumerate(steps)}, {id_: k for k, id_ in enumerate(dev.ids)}
    t = tables(len(steps), len(dev.ids), [pos[g["step_a"]] for g in valid], [pos[g["step_b"]] for g in valid],
               [tournament.SCORE[g["outcome"]] for g in valid], [group[g["id"]] for g in valid])
    ranking = rank(t, ridge=config.ridge, n_boot=config.n_boot, seed=config.seed)
    chosen = steps[ranking.best]
    order = sorted(range(len(steps)), key=lambda k: (-ranking.strength[k], steps[k]))
    place = {k: n + 1 for n, k in enumerate(order)}
    rows = [{"rank": place[k], "step": s, "strength": float(ranking.strength[k]), "ci_low": float(ranking.ci_low[k]),
             "ci_high": float(ranking.ci_high[k]), "p_top": float(ranking.p_top[k]), "wins": int(ranking.wins[k]),
             "ties": int(ranking.ties[k]), "losses": int(ranking.losses[k]),
             "games": int(ranking.wins[k] + ranking.ties[k] + ranking.losses[k]), "chosen": s == chosen}
            for k, s in enumerate(steps)]
    calls = judge.stats.as_dict() if judge is not None else {"api_calls": 0, "cached": 0, "retries": {}}
    result = {
        "run": str(run.path), "out": str(out), "label": run.label, "chosen_step": chosen, "last_step": steps[-1],
        "steps": steps,
        "criterion": "highest Bradley-Terry strength (ties broken by the earlier step)",
        "dev": {"n": len(dev.records), "source": dev.source, "description": dev.description, "path": dev.path,
                "seed": config.seed, "ids": dev.ids, "overlap": dev.overlap},
        "sampling": {**dataclasses.asdict(sampling), "seed": config.seed, "dtype": config.dtype,
                     "note": "the paper's settings; the same seed for every checkpoint"},
        "schedule": {"scheme": plan.scheme, "description": plan.description, "max_calls": config.max_calls,
                     "calls": plan.calls, "round_robin_calls": plan.round_robin_calls,
                     "pairs": [[steps[i], steps[j]] for i, j in plan.pairs]},
        "judge": tournament.describe(judge) if judge is not None else None,
        "games": {"total": len(games), "identical_answers": sum(g["identical"] for g in games),
                  "invalid": len(games) - len(valid)},
        "calls": {**calls, "seconds": round(time.perf_counter() - t0, 3)},
        "bradley_terry": {"ties": TIES, "ridge": config.ridge, "bootstrap": config.n_boot, "level": 0.95,
                          "ci": "percentile bootstrap over dev prompts", "strength": "logits, mean 0 (ridge)"},
        "ranking": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "games.jsonl", "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in games))
    write_csv(out / "ranking.csv", rows, RANKING_COLUMNS)
    atomic_write(out / "selection.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if result["games"]["invalid"]:
        log(f"select: warning: {result['games']['invalid']} game(s) got no valid verdict; they are left out of the "
            "fit and asked again by the next run")
    return result


def read_selection(run_dir: str | Path) -> dict:
    """The selection.json `mbc-jax select` wrote into a run folder."""
    path = Path(run_dir) / SELECTION / "selection.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; run `mbc-jax select --run {run_dir}` first")
    return json.loads(path.read_text())
