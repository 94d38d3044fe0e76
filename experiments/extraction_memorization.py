"""Extraction memorization (Zeng et al.) of what fine-tuning trained: prompt the model with a training
record's prompt and the first part of its response, decode greedily, and compare the continuation with
the rest of the response, per category, at step 0 (the model before fine-tuning) and the checkpoints.

    python -m experiments.zeng --runs runs/demo/uniform --out figures/ --no-attention \
        [--prefix-fraction 0.5 | --prefix-tokens N] [--window response|pythia] [--steps all] \
        [--threshold 0.5] [--max-records 200] [--max-new-tokens 64] [--no-baseline]

Records are tokenized exactly as in training (template, EOS). With `--window response` (default) the
response is the last response span of the record (its tokens under the response mask, EOS included);
the model gets every token before it (the full prompt, the record's context included) and the first p
response tokens (p = round(fraction x m) of an m-token response, or the given count; at least one
response token on each side), then continues for L = min(m - p, --max-new-tokens) tokens (greedy, no
repetition penalty, stopping at EOS). `--window pythia` is the pretraining-style test instead: the
first 32 tokens of the whole rendered record, then 32 tokens compared (records under 64 tokens are
skipped). The continuation (candidate) is compared with the L reference tokens:

- token match rate: positions t < L where candidate[t] == reference[t], over L;
- longest common prefix: the number of leading tokens that agree (and that number over L);
- ROUGE-L: F1 of token-LCS precision (over the candidate) and recall (over the reference);
- exact extraction: the whole reference reproduced.

A record counts as memorized when its ROUGE-L reaches `--threshold` (our choice: 0.5, half the
reference reproduced in order); the memorization ratio of a category is the share of its records that
do. Step 0 (the pre-fine-tuning weights every run folder keeps) is the baseline: each table gives the
difference to it per category, with percentile-bootstrap 95% CIs over records (paired: the same
records at both steps).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments import common
from experiments.common import fmt
from mbc_jax.generate import EXTRACTION_MAX_NEW_TOKENS
from mbc_jax.progress import progress_bar
from mbc_jax.run_folder import RunFolder

NAME = "extraction_memorization"
TITLE = "Extraction memorization of the fine-tuned responses, against the model before fine-tuning"
WINDOWS = ("response", "pythia")
PYTHIA_TOKENS = 32  # Biderman et al. (2023): 32-token prompt, 32-token continuation
DEFAULT_THRESHOLD = 0.5
METRICS = ("token_match_rate", "longest_prefix", "longest_prefix_fraction", "rouge_l", "exact_extraction")
RECORD_COLUMNS = ("run", "step", "index", "id", "category", "tokens", "prompt_tokens", "response_tokens",
                  "prefix_tokens", "suffix_tokens", "generated_tokens", "prefix_clipped", *METRICS, "memorized")
SUMMARY_COLUMNS = ("run", "step", "category", "records", "rank", "response_tokens", "prompt_tokens", *METRICS,
                   "rouge_l_lo", "rouge_l_hi", "ratio", "ratio_lo", "ratio_hi", "rouge_l_change", "rouge_l_change_lo",
                   "rouge_l_change_hi", "ratio_change", "ratio_change_lo", "ratio_change_hi")


# ----------------------------------------------------------------------------- the metrics


def token_match_rate(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """Share of the reference's positions where the candidate has the same token."""
    if not len(reference):
        return float("nan")
    n = min(len(candidate), len(reference))
    return float(sum(int(candidate[t]) == int(reference[t]) for t in range(n)) / len(reference))


def longest_common_prefix(candidate: Sequence[int], reference: Sequence[int]) -> int:
    k = 0
    for a, b in zip(candidate, reference):
        if int(a) != int(b):
            break
        k += 1
    return k


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    a, b = [int(x) for x in a], [int(x) for x in b]
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L F1 on tokens: LCS precision (over the candidate), recall (over the reference); 0 if either is empty."""
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(candidate), lcs / len(reference)
    return 2 * p * r / (p + r)


def compare(candidate: Sequence[int], reference: Sequence[int]) -> dict:
    k = longest_common_prefix(candidate, reference)
    return {"token_match_rate": token_match_rate(candidate, reference), "longest_prefix": k,
            "longest_prefix_fraction": k / len(reference) if len(reference) else float("nan"),
            "rouge_l": rouge_l_f1(candidate, reference),
            "exact_extraction": float(len(candidate) >= len(reference) and k == len(reference))}


# ----------------------------------------------------------------------------- where records are cut


def split_point(n: int, fraction: float | None, tokens: int | None) -> int:
    """Prefix length p of an n-token span: 1 <= p <= n - 1."""
    p = tokens if tokens is not None else int(round(fraction * n))
    return max(1, min(p, n - 1))


def response_span(response_mask: np.ndarray) -> tuple[int, int] | None:
    """[start, end) of the record's last response span (its last run of response tokens); None without one."""
    idx = np.flatnonzero(np.asarray(response_mask, bool))
    if not len(idx):
        return None
    end = int(idx[-1]) + 1
    gaps = np.flatnonzero(np.diff(idx) > 1)
    start = int(idx[gaps[-1] + 1]) if len(gaps) else int(idx[0])
    return start, end


@dataclasses.dataclass(frozen=True)
class Cut:
    """Where one record is cut: the model sees tokens [0, prefix_end), the reference is [prefix_end, end)."""

    prompt_tokens: int  # tokens before the response span (the record's full prompt)
    response_tokens: int  # tokens of the response span
    prefix_end: int
    end: int
    prefix_tokens: int  # response tokens given with the prompt (`--window pythia`: the window's 32 tokens)


def cut(example, *, window: str = "response", fraction: float | None = 0.5, tokens: int | None = None,
        max_new_tokens: int = EXTRACTION_MAX_NEW_TOKENS) -> Cut | str:
    """The Cut of one Example, or why it has none (a short reason, counted in the report)."""
    span = response_span(example.response_mask)
    r0, r1 = span if span else (len(example), len(example))
    if window == "pythia":
        if len(example) < 2 * PYTHIA_TOKENS:
            return f"shorter than {2 * PYTHIA_TOKENS} tokens"
        return Cut(r0, r1 - r0, PYTHIA_TOKENS, 2 * PYTHIA_TOKENS, PYTHIA_TOKENS)
    if span is None:
        return "no response token (truncated away)"
    if r1 - r0 < 2:
        return "response shorter than 2 tokens"
    p = split_point(r1 - r0, fraction, tokens)
    return Cut(r0, r1 - r0, r0 + p, min(r1, r0 + p + max_new_tokens), p)


# ----------------------------------------------------------------------------- running it


def select_examples(run: RunFolder, tokenizer, vocab_size: int, max_records: int | None, cut_fn: Callable,
                    log=common.log) -> tuple[list, list[Cut]]:
    """Category-balanced training examples that have a cut (at most `max_records`), with their cuts;
    the records left out and why are logged."""
    _, examples = run.examples("train", tokenizer, vocab_size)
    cuts = [cut_fn(e) for e in examples]
    skipped: dict[str, int] = {}
    for c in cuts:
        if isinstance(c, str):
            skipped[c] = skipped.get(c, 0) + 1
    if skipped:
        log(f"{NAME}: {run.label}: left out " + ", ".join(f"{n} records ({why})" for why, n in skipped.items()))
    keep = [i for i, c in enumerate(cuts) if not isinstance(c, str)]
    if not keep:
        raise common.UserError(f"{run.path}: no training record can be cut ({', '.join(skipped)})")
    order = common.balanced_order([examples[i].category for i in keep])
    chosen = sorted(keep[j] for j in (order[:max_records] if max_records else order))
    return [examples[i] for i in chosen], [cuts[i] for i in chosen]


def extract(model, examples: list, cuts: list[Cut], *, batch_size: int = 32, eos: int | None = None) -> list[dict]:
    """One dict per example: its cut, the candidate's length and the metrics. Prefixes longer than the
    model's positions allow (with the new tokens) keep their last tokens (`prefix_clipped`)."""
    from mbc_jax.generate import SamplingConfig, generate

    cfg = SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=max(c.end - c.prefix_end for c in cuts))
    room = cfg.prompt_room(model.config.max_position_embeddings)
    prompts = [e.input_ids[:c.prefix_end][-room:] for e, c in zip(examples, cuts)]
    gens = generate(model, prompts, cfg, eos_token_id=eos, batch_size=batch_size, row_keys=[e.index for e in examples])
    out = []
    for e, c, g in zip(examples, cuts, gens):
        reference = e.input_ids[c.prefix_end:c.end]
        candidate = g.output_ids[:len(reference)]
        out.append({"index": e.index, "id": e.id, "category": e.category, "tokens": len(e),
                    "prompt_tokens": c.prompt_tokens, "response_tokens": c.response_tokens,
                    "prefix_tokens": c.prefix_tokens, "suffix_tokens": len(reference),
                    "generated_tokens": len(candidate), "prefix_clipped": int(c.prefix_end > room),
                    **compare(candidate, reference)})
    return out


def resolve_steps(run: RunFolder, spec: str = "all", baseline: bool = True, log=common.log) -> list[int]:
    """Checkpoint steps from `spec` ("all", or a comma list of steps and the words first / last), with
    step 0 (the model before fine-tuning) added when `baseline`; every one must be saved."""
    saved = run.checkpoint_steps()
    if not saved:
        raise common.UserError(f"{run.path / 'checkpoints'}: no saved checkpoints; the analysis needs model weights")
    if spec == "all":
        steps = list(saved)
    else:
        steps = []
        for word in (w.strip() for w in spec.split(",") if w.strip()):
            if word in ("first", "last"):
                steps.append(run.first_last_checkpoints(None, log)[word])
            elif word.isdigit() and int(word) in saved:
                steps.append(int(word))
            else:
                raise common.UserError(f"--steps: {word!r} is not a saved checkpoint of {run.path} "
                                       f"(saved: {', '.join(map(str, saved))}; or use first, last, all)")
    if baseline and 0 not in steps:
        if 0 not in saved:
            raise common.UserError(f"{run.path / 'checkpoints' / '0'}: missing; the baseline is the model before "
                                   "fine-tuning (step 0's weights); pass --no-baseline to go without it")
        steps.append(0)
    return sorted(set(steps))


def measure(run: RunFolder, steps: Sequence[int], *, window: str = "response", fraction: float | None = 0.5,
            tokens: int | None = None, max_records: int | None = 200,
            max_new_tokens: int = EXTRACTION_MAX_NEW_TOKENS, batch_size: int = 32, cache_dir: str | Path | None = None,
            mesh: str | None = None, per_step: Callable | None = None, log=common.log) -> list[dict]:
    """Extraction rows of every selected record at every step. `per_step(model, step, examples, cuts, rows)`,
    when given, runs while that checkpoint's model is loaded (the attention analysis uses it)."""
    tok = run.tokenizer()
    eos = run.template().eos_id(tok)
    examples = cuts = None
    out = []
    with progress_bar(len(steps), f"{NAME}: {run.label}", unit="ckpt") as bar:
        for step in steps:
            t0 = time.perf_counter()
            with common.checkpoint_model(run, step, cache_dir, mesh) as model:
                if examples is None:
                    examples, cuts = select_examples(run, tok, model.config.vocab_size, max_records, lambda e: cut(
                        e, window=window, fraction=fraction, tokens=tokens, max_new_tokens=max_new_tokens), log)
                rows = [{"run": run.label, "step": step, **r}
                        for r in extract(model, examples, cuts, batch_size=batch_size, eos=eos)]
                if per_step is not None:
                    per_step(model, step, examples, cuts, rows)
            out += rows
            bar.update()
            with bar.external_write_mode():  # the line above the bar, not glued to it
                log(f"{NAME}: {run.label} step {step}: {len(rows)} records, ROUGE-L "
                    f"{np.mean([r['rouge_l'] for r in rows]):.3f} ({time.perf_counter() - t0:.0f}s)")
    return out


# ----------------------------------------------------------------------------- per category, with CIs


def summarize(records: list[dict], *, threshold: float = DEFAULT_THRESHOLD, n_boot: int = 1000,
              seed: int = 0) -> list[dict]:
    """Per run, step and category ("all" first): means, ROUGE-L and memorization ratio with CIs, the
    rank of the category by ROUGE-L at that step (1 = most extractable), and the change from step 0
    (paired over the same records) with CIs."""
    for r in records:
        r["memorized"] = float(r["rouge_l"] >= threshold)
    out = []
    for run, step, at, base in common.by_run_and_step(records):
        rows = []
        for cat in ["all", *sorted({r["category"] for r in at})]:
            sel = at if cat == "all" else [r for r in at if r["category"] == cat]
            row = {"run": run, "step": step, "category": cat, "records": len(sel),
                   **{m: float(np.mean([r[m] for r in sel])) for m in METRICS}}
            for k in ("response_tokens", "prompt_tokens"):
                row[k] = float(np.mean([r[k] for r in sel]))
            _, row["rouge_l_lo"], row["rouge_l_hi"] = common.mean_ci([r["rouge_l"] for r in sel], n_boot=n_boot,
                                                                     seed=seed)
            row["ratio"], row["ratio_lo"], row["ratio_hi"] = common.mean_ci([r["memorized"] for r in sel],
                                                                            n_boot=n_boot, seed=seed)
            for m, key in (("rouge_l", "rouge_l_change"), ("memorized", "ratio_change")):
                d = [r[m] - base[r["index"]][m] for r in sel if r["index"] in base]
                row[key], row[key + "_lo"], row[key + "_hi"] = common.mean_ci(d, n_boot=n_boot, seed=seed)
            rows.append(row)
        ranked = sorted(rows[1:], key=lambda s: -s["rouge_l"])
        for k, s in enumerate(ranked, 1):
            s["rank"] = k
        rows[0]["rank"] = ""
        out += rows
    return out


def ci(s: dict, name: str, digits: int = 3) -> str:
    return f"{fmt(s[name], digits)} [{fmt(s[name + '_lo'], digits)}, {fmt(s[name + '_hi'], digits)}]"


def task_table(summary: list[dict], run: str, step: int) -> str:
    """Markdown: the categories of one run at one step, ranked, with step 0 and the change beside them."""
    base = {s["category"]: s for s in summary if s["run"] == run and s["step"] == 0}
    rows = sorted((s for s in summary if s["run"] == run and s["step"] == step and s["category"] != "all"),
                  key=lambda s: s["rank"])
    rows += [s for s in summary if s["run"] == run and s["step"] == step and s["category"] == "all"]
    return common.markdown_table(
        [[s["rank"], s["category"], s["records"], fmt(s["response_tokens"], 1),
          fmt(base[s["category"]]["rouge_l"]) if s["category"] in base else "n/a", ci(s, "rouge_l"),
          ci(s, "rouge_l_change"), ci(s, "ratio"), ci(s, "ratio_change"), common.pct(s["exact_extraction"])]
         for s in rows],
        ["rank", "category", "records", "mean response tokens", "ROUGE-L step 0", f"ROUGE-L step {step} [95% CI]",
         "change from step 0", "memorization ratio", "ratio change", "exact"])


def plot(summary: list[dict], path: Path, threshold: float) -> Path:
    """Per run: ROUGE-L per category over the steps (step 0 included), and the change from step 0 at the
    last step per category, ranked, with CIs and the mean response length."""
    runs = list(dict.fromkeys(s["run"] for s in summary))
    fig, axes = common.figure(len(runs), 2, size=(13.0, 4.2 * len(runs)))
    for r, run in enumerate(runs):
        mine = [s for s in summary if s["run"] == run]
        cats = sorted({s["category"] for s in mine} - {"all"})
        colors = common.category_colors(cats)
        ax, bx = axes[2 * r], axes[2 * r + 1]
        for cat in ["all", *cats]:
            rows = sorted((s for s in mine if s["category"] == cat), key=lambda s: s["step"])
            x = [s["step"] for s in rows]
            kw = {"color": "black", "lw": 2.2} if cat == "all" else {"color": colors[cat], "lw": 1.2}
            ax.plot(x, [s["rouge_l"] for s in rows], marker="o", ms=3, label=cat, **kw)
            ax.fill_between(x, [s["rouge_l_lo"] for s in rows], [s["rouge_l_hi"] for s in rows], alpha=0.12,
                            color=kw["color"])
        ax.set_xlabel("step (0 = before fine-tuning)")
        ax.set_ylabel("ROUGE-L of the continuation")
        ax.set_ylim(0, 1)
        ax.set_title(f"{run}: extraction per category (a record is memorized at ROUGE-L >= {threshold:g})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        last = max(s["step"] for s in mine)
        rows = sorted((s for s in mine if s["step"] == last and s["category"] != "all"), key=lambda s: s["rank"])
        x = np.arange(len(rows))
        y = np.array([s["rouge_l_change"] for s in rows])
        err = np.abs(np.array([[s["rouge_l_change_lo"] for s in rows], [s["rouge_l_change_hi"] for s in rows]]) - y)
        bx.bar(x, y, color=[colors[s["category"]] for s in rows], yerr=err, capsize=3)
        for i, s in enumerate(rows):
            bx.text(i, 0, f"{s['response_tokens']:.0f} tok", ha="center", va="bottom", fontsize=7, rotation=90)
        bx.axhline(0, color="black", lw=0.8)
        bx.set_xticks(x, [s["category"] for s in rows], rotation=25, ha="right", fontsize=8)
        bx.set_ylabel(f"ROUGE-L change, step {last} - step 0")
        bx.set_title(f"{run}: what fine-tuning memorized\n(ranked by ROUGE-L at step {last}; bars: change from "
                     f"step 0 with 95% CI; labels: mean response tokens)", fontsize=9)
        bx.grid(alpha=0.3, axis="y")
    return common.save_figure(fig, path)


def window_text(window: str, fraction: float | None, tokens: int | None) -> str:
    if window == "pythia":
        return (f"Pythia-style windows: the first {PYTHIA_TOKENS} tokens of the whole rendered record, "
                f"{PYTHIA_TOKENS} tokens compared")
    given = f"the first {tokens} tokens" if tokens is not None else f"the first {fraction:.0%}"
    return f"the record's full prompt and {given} of its response given, the rest of the response compared"


def check_options(window: str, fraction: float | None, tokens: int | None, max_new_tokens: int,
                  threshold: float) -> None:
    if window not in WINDOWS:
        raise common.UserError(f"--window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if tokens is None and not (fraction is not None and 0 < fraction < 1):
        raise common.UserError(f"--prefix-fraction must be in (0, 1), got {fraction}")
    if tokens is not None and tokens < 1:
        raise common.UserError(f"--prefix-tokens must be >= 1, got {tokens}")
    if max_new_tokens < 1:
        raise common.UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not 0 < threshold <= 1:
        raise common.UserError(f"--threshold must be in (0, 1], got {threshold}")
