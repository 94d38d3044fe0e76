"""MBC vs baseline judged at each run's selected checkpoint, and at its last one (labelled).

`experiments.reproduce` calls `judge_runs`: every run first chooses its checkpoint with
`mbc_jax.selection.select_checkpoint` (the paper's 50-example development set, automated: judge
games between checkpoints on dev prompts, a Bradley-Terry ranking), then MBC (A) is judged against the
baseline (B) at each learning rate twice:

- `lr<LR>_selected.json`: each run's answers at its selected step; where selection found no winner
  (`mbc_jax.selection.select.NO_WINNER_RULE`), at its last checkpoint instead, labelled as such in the
  comparison's label and in the notes (REPORT.md);
- `lr<LR>_last.json`: each run's answers at its last checkpoint (the Table 1 generations).

Both comparisons use the same prompts: the Table 1 validation prompts minus every dev prompt either run
selected on (the dev prompts are drawn from the validation split, so they are left out here to keep the
paper's separation of development and judged sets; how many were left out is logged and in the notes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mbc_jax.answers_file import answer_rows, write_answers
from mbc_jax.formatting import fmt_lr
from mbc_jax.generate import SamplingConfig
from mbc_jax.judge import JudgeConfig, judge_files
from mbc_jax.run_folder import RunFolder
from mbc_jax.selection import DEFAULT_DEV, DEFAULT_MAX_CALLS, SelectConfig, answers_at_step, select_checkpoint

# dev prompts and the bound on judge calls of each run's selection, per `reproduce --scale`: the paper's 50
# dev prompts elsewhere; 16 for the CPU demo (its validation split has 80 records; 64 are left to judge)
SELECT = {"tiny": {"dev": 16, "max_calls": 500}, "small": {"dev": DEFAULT_DEV, "max_calls": DEFAULT_MAX_CALLS},
          "paper": {"dev": DEFAULT_DEV, "max_calls": DEFAULT_MAX_CALLS}}




def selected_step(selection: dict) -> int:
    """The step judged as "selected": the chosen one, or the last checkpoint when selection found no winner."""
    return selection["last_step"] if selection["chosen_step"] is None else selection["chosen_step"]


def step_label(selection: dict) -> str:
    """"step N", or "step N (last: no winner)" for the fallback."""
    if selection["chosen_step"] is None:
        return f"step {selection['last_step']} (last checkpoint: selection found no winner)"
    return f"step {selection['chosen_step']}"


def judge_runs(folders: dict[tuple[str, float], RunFolder], last_answers: dict[tuple[str, float], Path],
               lrs: Sequence[float], out: Path, *, url: str, judge_model: str, dev: int, max_calls: int,
               max_new_tokens: int, mesh: str | None = None, limit: int | None = None,
               log: Callable[[str], None] = print) -> tuple[list[Path], list[str], list[str]]:
    """(results files, their labels, notes): MBC vs baseline at the selected and the last checkpoints."""
    judge = JudgeConfig(model=judge_model)
    selected, notes = {}, []
    for key, run in folders.items():
        res = select_checkpoint(run.path, SelectConfig(dev=dev, max_calls=max_calls, max_new_tokens=max_new_tokens,
                                                       mesh=mesh), judge, base_url=url, progress=False, log=log)
        selected[key] = res
        if res["chosen_step"] is None:
            notes.append(f"selection: {run.label}: {res['reason']}; FALLBACK: its last checkpoint (step "
                         f"{res['last_step']}) stands in for the selected one ({res['schedule']['description']})")
        else:
            notes.append(f"selection: {run.label} chose step {res['chosen_step']} of {len(res['steps'])} checkpoints "
                         f"(last {res['last_step']}; {res['schedule']['description']}; dev prompts: "
                         f"{res['dev']['description']})")
    sampling = SamplingConfig(max_new_tokens=max_new_tokens).validate()  # the paper's, as Table 1 generates
    results, labels = [], []
    for lr in lrs:
        keys = [("mbc", lr), ("uniform", lr)]
        if not all(k in folders and k in last_answers for k in keys):
            continue
        dev_ids = {i for k in keys for i in selected[k]["dev"]["ids"]}
        last = {k: [r for r in answer_rows(last_answers[k]) if str(r["id"]) not in dev_ids] for k in keys}
        ids = [str(r["id"]) for r in last[keys[0]]]
        left_out = len(answer_rows(last_answers[keys[0]])) - len(ids)
        notes.append(f"judge at lr {fmt_lr(lr)}: {len(ids)} validation prompts, {left_out} dev prompt(s) left out")
        files: dict[str, dict] = {"selected": {}, "last": {}}
        for k in keys:
            run, step = folders[k], selected_step(selected[k])
            by_id = {str(r.id): r for r in run.load_records("val")}
            files["selected"][k[0]] = out / "answers" / f"{run.slug}_step{step}.jsonl"
            answers_at_step(run, step, [by_id[i] for i in ids], files["selected"][k[0]], sampling=sampling, seed=0,
                            mesh=mesh, log=log)
            files["last"][k[0]] = out / "answers" / f"{run.slug}_last.jsonl"
            write_answers(files["last"][k[0]], last[k])
        steps = {k[0]: step_label(selected[k]) for k in keys}
        for which, label in (("selected", f"lr {fmt_lr(lr)}, selected (MBC {steps['mbc']}, baseline "
                                          f"{steps['uniform']})"),
                             ("last", f"lr {fmt_lr(lr)}, last checkpoint")):
            path = out / f"lr{fmt_lr(lr)}_{which}.json"
            log(f"judging MBC vs baseline: {label}")
            judge_files(files[which]["mbc"], files[which]["uniform"], path, config=judge, base_url=url, name_a="MBC",
                        name_b="baseline", limit=limit, allow_empty=True, log=log, progress=False)
            results.append(path)
            labels.append(label)
    return results, labels, notes
