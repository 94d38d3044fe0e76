"""One comparison of two answer files: match, judge under a protocol, summarize, write the outputs.

`judge_files(A, B, OUT)` is what `mbc-jax judge --a A --b B --out OUT` runs. `orders=1` (the
default) is the paper's protocol, one judgment per pair in a seeded order; `orders=2` judges both
orders (see `protocol`). Empty answers stop it with the file:line of each (unless `allow_empty`;
they are then counted as `n_empty`); a pair of identical answers is a tie without a judge call, counted
as `n_identical` (unless `judge_identical`); a pair without the valid verdicts its rates need is reported
(`n_invalid`), left out of those rates and retried by the next run.

The results JSON (OUT) holds `protocol` (orders, seed, which rates are the headline),
`single_order` rates (always) and `consistent` rates (with two orders; else null), each overall
and per category with bootstrap CIs, the mean answer `lengths` of each side, and the
`length_controlled` win rate of each kind of rates (see `length`). Next to it: the per-pair
judgments (`<stem>.judgments.jsonl`, with the judge's explanations), and the chart `<stem>.png`
with its numbers `<stem>.csv`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mbc_jax import UserError
from mbc_jax.judge import length, winrate
from mbc_jax.judge.answers import Matched, Pair, match_answers
from mbc_jax.judge.client import Judge, JudgeConfig, JudgeUnavailable, make_judge, public_url
from mbc_jax.judge.protocol import PROTOCOLS, identical_judgment, seeded_order
from mbc_jax.paths import check_output_file
from mbc_jax.run_folder import atomic_write


def output_paths(out: str | Path) -> dict[str, Path]:
    """The files of one comparison: results JSON, judgments JSONL, chart PNG and its CSV."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {"results": out, "judgments": Path(f"{stem}.judgments.jsonl"),
            "png": Path(f"{stem}.png"), "csv": Path(f"{stem}.csv")}


def default_name(path: str | Path, other: str | Path) -> str:
    """A short label for a model: the file stem, or the folder if both stems are equal."""
    path, other = Path(path), Path(other)
    if path.stem != other.stem:
        return path.stem
    return path.resolve().parent.name or path.stem


def summarize_judgments(judgments: list[dict], *, orders: int, seed: int = 0, n_boot: int = 1000) -> dict:
    """The results' rate blocks from per-pair judgments: protocol, single_order, consistent (None with one
    order), lengths, length_controlled (per kind of rates) and bootstrap."""
    kinds = ["single_order"] + (["consistent"] if orders == 2 else [])
    rates = {kind: winrate.summarize(judgments, kind, n_boot=n_boot, seed=seed) for kind in kinds}
    headline = kinds[-1]
    seeded = [j["seeded_order"] for j in judgments]
    lc_fields = {"single_order": "single", "consistent": "consistent_outcome"}
    return {
        "protocol": {
            "orders": orders,
            "seed": seed,
            "headline": headline,
            "papers_protocol": orders == 1,
            "description": winrate.KINDS[headline][1],
            "order_draw": "per pair, a_first or b_first from sha256(seed, pair key) (protocol.seeded_order)",
            "seeded_orders": {o: seeded.count(o) for o in ("a_first", "b_first")},
        },
        "single_order": rates["single_order"],
        "consistent": rates.get("consistent"),
        "lengths": {"overall": length.answer_lengths(judgments),
                    "per_category": {cat: length.answer_lengths([j for j in judgments
                                                                 if str(j.get("category") or "(none)") == cat])
                                     for cat in rates[headline]["per_category"]}},
        "length_controlled": {
            "method": "logistic regression of the verdict (A win 1, tie 0.5, B win 0) on tanh(word-length "
                      "difference / its sd), as length-controlled AlpacaEval; LC win rate = prediction at zero "
                      "length difference (mbc_jax/judge/length.py)",
            **{kind: length.length_controlled(judgments, lc_fields[kind], n_boot=n_boot, seed=seed)
               for kind in kinds},
        },
        "bootstrap": winrate.bootstrap_info(n_boot, seed),
    }


def judge_files(
    path_a: str | Path,
    path_b: str | Path,
    out: str | Path,
    *,
    config: JudgeConfig | None = None,
    base_url: str | None = None,
    cache_dir: str | Path | None = None,
    name_a: str | None = None,
    name_b: str | None = None,
    template: str | Path | None = None,
    orders: int = 1,
    seed: int = 0,
    max_calls: int | None = None,
    n_boot: int = 1000,
    allow_empty: bool = False,
    judge_identical: bool = False,
    limit: int | None = None,
    progress: bool = True,
    sleep: Callable[[float], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Judge A against B, write results JSON, judgments JSONL and chart; return the results.

    `orders`: 1 (the paper's protocol) or 2; `seed` draws each pair's order and seeds the
    bootstraps; `max_calls` bounds the judge requests (UserError before sending if more are needed).
    Pairs whose two answers are the same text are ties without a call (`n_identical`), unless
    `judge_identical`.
    """
    if orders not in PROTOCOLS:
        raise UserError(f"--orders must be 1 (the paper's protocol) or 2 (both orders), got {orders}")
    config = config or JudgeConfig()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    paths = output_paths(out)
    _check_outputs(paths)  # before the judge is reached or an answer read
    judge = make_judge(config, base_url,
                       cache_dir if cache_dir is not None else paths["results"].parent / "judge_cache", template, sleep)
    matched = match_answers(path_a, path_b)
    name_a = name_a or default_name(path_a, path_b)
    name_b = name_b or default_name(path_b, path_a)
    pairs, empty = _pairs_to_judge(matched, path_a, path_b, limit, allow_empty, log)

    started = time.monotonic()
    same = [p for p in pairs if not judge_identical and p.answer_a == p.answer_b]
    try:
        asked = judge.judge_pairs([p for p in pairs if judge_identical or p.answer_a != p.answer_b], orders=orders,
                                  seed=seed, max_calls=max_calls, progress=progress, on_result=on_result)
    except JudgeUnavailable as e:
        raise UserError(f"judge endpoint {public_url(judge.endpoint)} unreachable or failing after retries "
                        f"({e}); {len(judge.cache)} judgment(s) are cached in {judge.cache.dir}: rerun the "
                        "same command to resume") from None
    judgments = _in_order(pairs, asked, same, orders, seed)
    rates = summarize_judgments(judgments, orders=orders, seed=seed, n_boot=n_boot)
    headline = rates["protocol"]["headline"]
    n_invalid = rates[headline]["overall"]["n_invalid"]
    results = {
        "name_a": name_a,
        "name_b": name_b,
        "a": str(path_a),
        "b": str(path_b),
        "judge": _judge_info(config, judge),
        "n_pairs": len(pairs),
        "n_invalid": n_invalid,
        "n_identical": sum(p.answer_a == p.answer_b for p in pairs),
        "identical": IDENTICAL_JUDGED if judge_identical else IDENTICAL_RULE,
        "n_empty": {"a": sum(1 for _, s in empty if s == "a"),
                    "b": sum(1 for _, s in empty if s == "b")},
        "matched_by": matched.field,
        "unmatched": {"only_in_a": matched.only_a, "only_in_b": matched.only_b},
        "calls": {**judge.stats.as_dict(), "cache_dir": str(judge.cache.dir),
                  "seconds": round(time.monotonic() - started, 3)},
        **rates,
    }
    _write_outputs(paths, judgments, results, plot=bool(rates[headline]["overall"]["n"]),
                   title=f"{name_a} vs {name_b} (judge: {config.model}, --orders {orders})")
    if n_invalid:
        log(f"warning: {n_invalid} pair(s) got no valid verdict after {config.max_retries} "
            "retries; they are left out of the rates and will be retried by the next run")
    return results


IDENTICAL_RULE = "a pair whose two answers are the same text is a tie without a judge call (as `mbc-jax select`)"
IDENTICAL_JUDGED = "identical answers were sent to the judge like any other pair (--judge-identical)"


def _check_outputs(paths: dict[str, Path]) -> None:
    for path in paths.values():
        check_output_file(path)


def _in_order(pairs: list[Pair], asked: list[dict], same: list[Pair], orders: int, seed: int) -> list[dict]:
    """The judgments in the pairs' order: the judge's for the pairs asked, a tie for identical ones."""
    by_key = {j["key"]: j for j in asked}
    same_keys = {p.key for p in same}
    return [identical_judgment(p, seeded=seeded_order(p.key, seed), orders=orders) if p.key in same_keys
            else by_key[p.key] for p in pairs]


def _pairs_to_judge(matched: Matched, path_a: str | Path, path_b: str | Path, limit: int | None, allow_empty: bool,
                    log: Callable[[str], None]) -> tuple[list[Pair], list[tuple[str, str]]]:
    """The matched pairs to judge (the first `limit`; unmatched records are logged) and their empty
    answers as (file:line, side); empty answers are an error unless `allow_empty`."""
    if matched.only_a or matched.only_b:
        log(f"warning: {len(matched.only_a)} record(s) only in {path_a}, "
            f"{len(matched.only_b)} only in {path_b}: not judged (matched by "
            f"{matched.field}; first: {(matched.only_a + matched.only_b)[:5]})")
    pairs = matched.pairs
    if limit is not None and limit < len(pairs):
        log(f"note: --limit {limit}: judging the first {limit} of {len(pairs)} matched pairs")
        pairs = pairs[:limit]
    empty = [(p.where_a, "a") for p in pairs if not p.answer_a.strip()]
    empty += [(p.where_b, "b") for p in pairs if not p.answer_b.strip()]
    if empty and not allow_empty:
        where = ", ".join(w for w, _ in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise UserError(f"{where}: empty output_text ({len(empty)} empty answer(s) in all); "
                        "regenerate them, or pass --allow-empty to judge them as they are")
    return pairs, empty


def _judge_info(config: JudgeConfig, judge: Judge) -> dict:
    """The results' `judge` block: the model, the endpoint (without credentials), the request
    parameters and the prompt template."""
    return {
        "model": config.model,
        "base_url": public_url(judge.endpoint),
        "params": config.params(),
        "template": judge.template.path,
        "template_sha256": judge.template.sha256,
    }


def _write_outputs(paths: dict[str, Path], judgments: list[dict], results: dict, *, plot: bool, title: str) -> None:
    """The judgments JSONL, the results JSON and, when `plot`, the chart (with its CSV)."""
    paths["results"].parent.mkdir(parents=True, exist_ok=True)
    atomic_write(paths["judgments"],
                  "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgments))
    atomic_write(paths["results"], json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if plot:
        winrate.plot_win_rates(winrate.summary_rows(results), paths["png"], name_a=results["name_a"],
                               name_b=results["name_b"], title=title)
    else:  # no chart to draw: a chart from an earlier run would show other results
        for key in ("png", "csv"):
            paths[key].unlink(missing_ok=True)


def _fmt(block: dict, part: str) -> str:
    lo, hi = block[f"{part}_ci"]
    return f"{100 * block[f'{part}_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _rates(results: dict, kind: str) -> str:
    o = results[kind]["overall"]
    if not o["n"]:
        return "no valid judgments"
    text = (f"{results['name_a']} wins {_fmt(o, 'win')}, tie {_fmt(o, 'tie')}, "
            f"{results['name_b']} wins {_fmt(o, 'loss')}")
    lc = results["length_controlled"][kind]
    if lc["lc_win_rate"] is not None:
        lo, hi = lc["lc_ci"]
        text += f", length-controlled {100 * lc['lc_win_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def summary_line(results: dict, out: str | Path) -> str:
    """For the terminal: pairs and calls, the rates of each kind with their CIs, lengths, consistency."""
    calls = results["calls"]
    orders = results["protocol"]["orders"]
    head = (f"judged {results['n_pairs']} pairs, {orders} order(s) each, seed {results['protocol']['seed']} "
            f"({calls['api_calls']} API calls, {calls['cached']} cached); identical: {results['n_identical']} "
            + ("(judged: --judge-identical)" if results["identical"] == IDENTICAL_JUDGED else "(ties without a call)"))
    parts = [f"one order (the paper's protocol): {_rates(results, 'single_order')}"]
    if orders == 2:
        o = results["consistent"]["overall"]
        parts.append(f"both orders, consistent: {_rates(results, 'consistent')}"
                     + (f"; consistency {100 * o['consistency']:.1f}% of the pairs judged"
                        if o.get("consistency") is not None else ""))
    lengths = results["lengths"]["overall"]
    if lengths["n"]:
        parts.append(f"mean words {results['name_a']} {lengths['mean_words_a']:.1f}, "
                     f"{results['name_b']} {lengths['mean_words_b']:.1f}")
    return f"{head}\n  " + "\n  ".join(parts) + f"\nwrote {out}"
