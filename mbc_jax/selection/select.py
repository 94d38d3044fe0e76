"""Checkpoint selection end to end: dev prompts, answers of every checkpoint, judged games, the fit.

    result = select_checkpoint("runs/mbc", SelectConfig(dev=50), JudgeConfig(), base_url=URL)
    result["chosen_step"]  # None when the games cannot separate the checkpoints ("no winner": result["reason"])

Writes into OUT (default RUN/selection/): `selection.json` (the chosen step or "no winner" with the
reason (`NO_WINNER_RULE`), the dev prompts cut to fit the model, the ranking, the dev
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
from mbc_jax.generate import AnswerProgress, SamplingConfig, answer_records, default_new_tokens
from mbc_jax.judge.bradley_terry import DEFAULT_RIDGE, rank, tables
from mbc_jax.judge.client import JudgeConfig, make_judge
from mbc_jax.models import load_model
from mbc_jax.models.config import config_from_hf
from mbc_jax.paths import check_output_file
from mbc_jax.run_folder import CONFIG, MODEL, RunFolder, atomic_write, write_csv
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
    max_new_tokens: int | None = None  # default: the paper's 256, capped by the model's positions
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


NO_WINNER_RULE = ("no winner when no game got a valid verdict, when every valid game was a tie, or when the "
                  "strongest checkpoint's 95% CI does not lie wholly above the CI of at least one other checkpoint "
                  "(ci_low of the strongest > ci_high of another); then no step is chosen")


def decide(steps: Sequence[int], ranking, games: Sequence[dict]) -> tuple[int | None, str]:
    """(the chosen step, why), or (None, why there is no winner) by NO_WINNER_RULE. A single checkpoint is
    chosen without games."""
    if len(steps) == 1:
        return steps[0], "the only checkpoint"
    valid = [g for g in games if g["outcome"] is not None]
    if not valid:
        return None, f"no winner: none of the {len(games)} games got a valid verdict"
    if all(g["outcome"] == "tie" for g in valid):
        same = sum(bool(g["identical"]) for g in valid)
        return None, (f"no winner: all {len(valid)} games were ties ({same} of them between identical answers); "
                      "the games cannot separate the checkpoints")
    best = ranking.best
    below = [k for k in range(len(steps)) if k != best and ranking.ci_low[best] > ranking.ci_high[k]]
    if not below:
        return None, (f"no winner: the strongest checkpoint (step {steps[best]}, 95% CI "
                      f"[{ranking.ci_low[best]:.2f}, {ranking.ci_high[best]:.2f}]) overlaps the 95% CI of every other "
                      "checkpoint; more dev prompts (--dev) may separate them")
    return steps[best], (f"step {steps[best]}: the highest Bradley-Terry strength; its 95% CI lies above that of "
                         f"step(s) {', '.join(str(steps[k]) for k in below)}")


def run_positions(run: RunFolder) -> int:
    """The positions of the run's model (RUN/model/config.json)."""
    path = run.path / MODEL / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; the run folder is incomplete (rerun `mbc-jax train`)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    return config_from_hf(cfg, str(path)).max_position_embeddings


def sampling_for(run: RunFolder, config: SelectConfig, log: Callable[[str], None]) -> SamplingConfig:
    """The paper's sampling settings with `config.max_new_tokens`, by default capped by the run's model
    positions as `mbc-jax generate` caps them (`default_new_tokens`)."""
    n = config.max_new_tokens
    if n is None:
        n, note = default_new_tokens(run_positions(run))
        if note:
            log(f"select: {note}")
    return SamplingConfig(max_new_tokens=n).validate()


def _check(config: SelectConfig) -> None:
    for name in ("max_calls", "max_new_tokens", "batch_size"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if config.ridge <= 0:
        raise UserError(f"--ridge must be > 0, got {config.ridge} (it keeps the fit finite when a checkpoint wins "
                        "every game)")


def _truncated(answers: dict[int, dict[str, dict]], log: Callable[[str], None]) -> dict[int, int]:
    """Dev prompts cut to fit the model, per step; a warning when any was."""
    counts = {step: sum(bool(r.get("prompt_truncated")) for r in rows.values()) for step, rows in answers.items()}
    worst = max(counts.values(), default=0)
    if worst:
        n = len(next(iter(answers.values())))
        log(f"select: warning: {worst} of {n} dev prompt(s) were cut to fit the model's positions (their first "
            "tokens dropped) before answering; lower --max-new-tokens to keep more of each prompt")
    return counts


def select_checkpoint(run_dir: str | Path, config: SelectConfig | None = None, judge_config: JudgeConfig | None = None,
                      *, out: str | Path | None = None, base_url: str | None = None,
                      cache_dir: str | Path | None = None, template: str | Path | None = None, progress: bool = True,
                      sleep: Callable[[float], None] | None = None,
                      log: Callable[[str], None] = lambda m: None) -> dict:
    """Rank the run's checkpoints with the judge on dev prompts and choose the strongest, or report that
    there is no winner (`NO_WINNER_RULE`; module docstring)."""
    config = config or SelectConfig()
    judge_config = judge_config or JudgeConfig()
    _check(config)
    run = RunFolder.open(run_dir)
    out = Path(out) if out is not None else run.path / SELECTION
    if out.is_file():
        raise UserError(f"--out {out}: is a file; give a folder (default: RUN/{SELECTION})")
    check_output_file(out / "selection.json", "--out")
    steps = candidate_steps(run, config.steps)
    dev = dev_set(run, config.dev, config.seed, config.dev_data)
    log(f"select: {len(steps)} checkpoints ({', '.join(map(str, steps))}); dev prompts: {dev.description}")
    plan = schedule(len(steps), len(dev.records), config.max_calls, tournament.CALLS_PER_JUDGMENT, config.seed)
    log(f"select: {plan.description}: at most {plan.calls} judge calls (round robin: {plan.round_robin_calls}; "
        f"--max-calls {config.max_calls})")
    judge = (make_judge(judge_config, base_url, cache_dir if cache_dir is not None else out / "judge_cache",
                                   template, sleep) if plan.pairs else None)  # endpoint checked before generating
    sampling = sampling_for(run, config, log)
    answers = {}
    for step in steps:
        rows = answers_at_step(run, step, dev.records, out / "answers" / f"step_{step}.jsonl", sampling=sampling,
                               seed=config.seed, batch_size=config.batch_size, mesh=config.mesh, dtype=config.dtype,
                               log=log)
        answers[step] = {str(r["id"]): r for r in rows}
    truncated = _truncated(answers, log)
    t0 = time.perf_counter()
    games = tournament.play(judge, steps, answers, plan.pairs, dev.ids, progress=progress)
    ranking = _rank(steps, dev.ids, games, config)
    chosen, reason = decide(steps, ranking, games)
    calls = judge.stats.as_dict() if judge is not None else {"api_calls": 0, "cached": 0, "retries": {}}
    result = _result(run, out, steps, dev, config, sampling, plan, judge, games, ranking, chosen, reason)
    result["prompts_truncated"] = {str(s): n for s, n in truncated.items()}
    result["calls"] = {**calls, "seconds": round(time.perf_counter() - t0, 3)}
    _write(out, result, games)
    if result["games"]["invalid"]:
        log(f"select: warning: {result['games']['invalid']} game(s) got no valid verdict; they are left out of the "
            "fit and asked again by the next run")
    if chosen is None:
        log(f"select: {reason}")
    return result


def _rank(steps: Sequence[int], ids: Sequence[str], games: Sequence[dict], config: SelectConfig):
    valid = [g for g in games if g["outcome"] is not None]
    pos, group = {s: k for k, s in enumerate(steps)}, {id_: k for k, id_ in enumerate(ids)}
    t = tables(len(steps), len(ids), [pos[g["step_a"]] for g in valid], [pos[g["step_b"]] for g in valid],
               [tournament.SCORE[g["outcome"]] for g in valid], [group[g["id"]] for g in valid])
    return rank(t, ridge=config.ridge, n_boot=config.n_boot, seed=config.seed)


def _result(run, out, steps, dev, config, sampling, plan, judge, games, ranking, chosen, reason) -> dict:
    """selection.json's content (calls and truncation are added by the caller)."""
    order = sorted(range(len(steps)), key=lambda k: (-ranking.strength[k], steps[k]))
    place = {k: n + 1 for n, k in enumerate(order)}
    rows = [{"rank": place[k], "step": s, "strength": float(ranking.strength[k]), "ci_low": float(ranking.ci_low[k]),
             "ci_high": float(ranking.ci_high[k]), "p_top": float(ranking.p_top[k]), "wins": int(ranking.wins[k]),
             "ties": int(ranking.ties[k]), "losses": int(ranking.losses[k]),
             "games": int(ranking.wins[k] + ranking.ties[k] + ranking.losses[k]), "chosen": s == chosen}
            for k, s in enumerate(steps)]
    valid = sum(g["outcome"] is not None for g in games)
    return {
        "run": str(run.path), "out": str(out), "label": run.label, "chosen_step": chosen, "last_step": steps[-1],
        "steps": steps, "winner": chosen is not None, "reason": reason,
        "criterion": "highest Bradley-Terry strength (ties broken by the earlier step); " + NO_WINNER_RULE,
        "dev": {"n": len(dev.records), "source": dev.source, "description": dev.description, "path": dev.path,
                "seed": config.seed, "ids": dev.ids, "overlap": dev.overlap},
        "sampling": {**dataclasses.asdict(sampling), "seed": config.seed, "dtype": config.dtype,
                     "note": "the paper's settings; the same seed for every checkpoint"},
        "schedule": {"scheme": plan.scheme, "description": plan.description, "max_calls": config.max_calls,
                     "calls": plan.calls, "round_robin_calls": plan.round_robin_calls,
                     "pairs": [[steps[i], steps[j]] for i, j in plan.pairs]},
        "judge": tournament.describe(judge) if judge is not None else None,
        "games": {"total": len(games), "identical_answers": sum(g["identical"] for g in games),
                  "ties": sum(g["outcome"] == "tie" for g in games), "invalid": len(games) - valid},
        "bradley_terry": {"ties": TIES, "ridge": config.ridge, "bootstrap": config.n_boot, "level": 0.95,
                          "ci": "percentile bootstrap over dev prompts", "strength": "logits, mean 0 (ridge)",
                          "p_top": "share of bootstrap fits with the highest strength (a tie at the top shared)"},
        "ranking": rows,
    }


def _write(out: Path, result: dict, games: Sequence[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "games.jsonl", "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in games))
    write_csv(out / "ranking.csv", result["ranking"], RANKING_COLUMNS)
    atomic_write(out / "selection.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def read_selection(run_dir: str | Path) -> dict:
    """The selection.json `mbc-jax select` wrote into a run folder."""
    path = Path(run_dir) / SELECTION / "selection.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; run `mbc-jax select --run {run_dir}` first")
    return json.loads(path.read_text())
