"""Attention concentration vs memorization (Zeng et al.): per training record, the entropy of the
attention distributions of every layer and head, against the record's exact memorization, per
category, with Pearson / Spearman correlations and bootstrap confidence intervals.

    python -m experiments.attention_concentration --runs runs/demo/uniform --out figures/ \
        [--step STEP] [--max-records 500] [--metric exact_match]

The checkpoint (default: the last saved) is exported and each record, tokenized as in training,
is run alone (no packing). The attention probabilities are the model's own: the forward pass runs
with the "intermediates" collection mutable, so every layer sows the float32 softmax it weighs its
values with (see `mbc_jax.models.transformer.CausalLM`: while they are collected, attention runs as
one batched einsum per layer). The probabilities of all layers of a batch are held at once,
layers x rows x heads x T^2 floats: lower --tokens-per-batch if that does not fit.

Per record, layer and head: the mean over query positions (those that see at least 2 keys; the
first token's distribution is always one-hot) of
- `entropy`: -sum_k p log p (nats);
- `normalized_entropy`: entropy / log(number of visible keys), in [0, 1], which removes the growth
  of entropy with position (and so with record length).
A record's concentration is the mean over layers and heads (lower entropy = more concentrated).
In `attention_concentration_heads.csv`, `window` is the layer's local window (0 = global).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.common import Artifact, fmt
from mbc_jax.models import sown_attention_probs
from mbc_jax.models.transformer import attention_mask
from mbc_jax.run_folder import RunFolder
from mbc_jax.sharding import batch_divisor, batch_sharding

NAME = "attention_concentration"
TITLE = "Attention concentration vs memorization"
MEASURES = ("entropy", "normalized_entropy")
SUMMARY_COLUMNS = ("run", "step", "category", "measure", "records", "mean", "pearson", "pearson_lo", "pearson_hi",
                   "spearman", "spearman_lo", "spearman_hi")
HEAD_COLUMNS = ("run", "step", "layer", "head", "window", "mean_entropy", "mean_normalized_entropy",
                "spearman_entropy", "spearman_normalized_entropy")
RECORD_COLUMNS = ("run", "step", "index", "id", "category", "tokens", "memorization", "entropy", "normalized_entropy")


# ----------------------------------------------------------------------------- attention from the model


def _entropy_stats(probs, mask, seg):
    """Per row and head: (sum of entropies, sum of normalized entropies) over the queries that see
    >= 2 keys, and the number of those queries (per row)."""
    plogp = jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
    ent = -plogp.sum(-1)  # [B, H, T]
    keys = mask.sum(-1).astype(jnp.float32)  # [B, 1, T]
    valid = (keys >= 2) & (seg[:, None, :] > 0)
    norm = ent / jnp.log(jnp.maximum(keys, 2.0))
    return jnp.where(valid, ent, 0).sum(-1), jnp.where(valid, norm, 0).sum(-1), valid[:, 0].sum(-1)


@functools.partial(jax.jit, static_argnames=("module", "what"))
def _forward(module, what: str, params, ids, pos, seg):
    """One forward pass that collects the attention probabilities: `what` = "probs" -> (logits, probs
    [L, B, H, T, T]); "entropy" -> (entropy sums [L, B, H], normalized sums [L, B, H], query counts [B])."""
    logits, state = module.apply({"params": params}, ids, pos, seg, mutable=["intermediates"])
    probs = sown_attention_probs(state)
    if what == "probs":
        return logits, probs
    windows = jnp.asarray(module.cfg.layer_windows, jnp.int32)
    masks = jax.vmap(lambda window: attention_mask(pos, seg, pos, seg, window))(windows)  # [L, B, 1, T, T]
    ent, norm, count = jax.vmap(_entropy_stats, in_axes=(0, 0, None))(probs, masks, seg)
    return ent, norm, count[0]


def _put(model, *arrays):
    shard = batch_sharding(model.mesh)
    return [jax.device_put(np.asarray(a, np.int32), shard) for a in arrays]


def _pad_rows(model, *arrays):
    pad = -len(arrays[0]) % batch_divisor(model.mesh)
    return [np.pad(np.asarray(a), ((0, pad), (0, 0))) for a in arrays]


def attention_probs(model, input_ids, positions=None, segment_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """(logits [B, T, V], attention probabilities [L, B, H, T_query, T_key]) of `model` (an
    `mbc_jax.models.Model`) on a batch; defaults as the model's: positions 0..T-1, one segment."""
    ids = np.asarray(input_ids)
    b, t = ids.shape
    pos = np.broadcast_to(np.arange(t), (b, t)) if positions is None else np.asarray(positions)
    seg = np.ones((b, t), np.int32) if segment_ids is None else np.asarray(segment_ids)
    args = _put(model, *_pad_rows(model, ids, pos, seg))
    logits, probs = _forward(model.module, "probs", model.params, *args)
    return np.asarray(logits)[:b], np.asarray(probs)[:, :b]


def record_entropies(model, examples: Sequence[Any], tokens_per_batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per example: (mean entropy [L, H], mean normalized entropy [L, H]) over its queries that see
    at least two keys. Examples run one per row, right-padded to a power-of-two length (at least
    64: few shapes, few compiles)."""
    n_layers, n_heads = model.config.num_layers, model.config.num_heads
    ent = np.full((len(examples), n_layers, n_heads), np.nan)
    norm = np.full_like(ent, np.nan)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    start = 0
    while start < len(order):
        t = max(64, 1 << (len(examples[order[start]]) - 1).bit_length())
        same = [i for i in order[start:] if len(examples[i]) <= t]
        rows = max(1, tokens_per_batch // t)
        members = same[:rows]
        ids = np.zeros((rows, t), np.int32)
        seg = np.zeros((rows, t), np.int32)
        for r, i in enumerate(members):
            x = examples[i].input_ids
            ids[r, :len(x)] = x
            seg[r, :len(x)] = 1
        pos = np.broadcast_to(np.arange(t), (rows, t))
        e, ne, count = _forward(model.module, "entropy", model.params, *_put(model, *_pad_rows(model, ids, pos, seg)))
        e, ne, count = np.asarray(e), np.asarray(ne), np.asarray(count)
        for r, i in enumerate(members):
            if count[r] > 0:
                ent[i] = e[:, r] / count[r]
                norm[i] = ne[:, r] / count[r]
        start += len(members)
    return ent, norm


# ----------------------------------------------------------------------------- the analysis


def analyse(run: RunFolder, *, step: int | None = None, metric: str = "exact_match", max_records: int | None = 500,
            tokens_per_batch: int = 8192, n_boot: int = 1000, seed: int = 0, cache_dir: str | Path | None = None,
            mesh: str | None = None, log=common.log) -> dict:
    saved = run.checkpoint_steps()
    if not saved:
        raise common.UserError(f"{run.path / 'checkpoints'}: no saved checkpoints")
    step = saved[-1] if step is None else step
    if step not in saved:
        raise common.UserError(f"{run.path}: no checkpoint of step {step} (saved: {', '.join(map(str, saved))})")
    tok = run.tokenizer()
    mem = run.memorization(step, "train")
    memo = dict(zip(mem["index"].tolist(), mem[metric].astype(float).tolist()))
    with common.checkpoint_model(run, step, cache_dir, mesh) as model:
        _, examples = run.examples("train", tok, model.config.vocab_size)
        examples = [e for e in examples if len(e) >= 2 and math.isfinite(memo.get(e.index, math.nan))]
        order = common.balanced_order([e.category for e in examples])
        examples = [examples[i] for i in sorted(order[:max_records] if max_records else order)]
        ent, norm = record_entropies(model, examples, tokens_per_batch)
        windows = [w if w < 1 << 29 else 0 for w in model.config.layer_windows]
    y = np.array([memo[e.index] for e in examples])
    cats = np.array([e.category for e in examples], dtype=object)
    values = {"entropy": ent.mean((1, 2)), "normalized_entropy": norm.mean((1, 2))}
    summary = []
    for cat in ["all", *sorted(set(cats))]:
        m = np.ones(len(cats), bool) if cat == "all" else cats == cat
        for measure in MEASURES:
            c = common.correlation(values[measure][m], y[m], n_boot=n_boot, seed=seed)
            summary.append({"run": run.label, "step": step, "category": cat, "measure": measure,
                            "records": int(m.sum()), "mean": float(np.nanmean(values[measure][m])),
                            **{k: c[k] for k in SUMMARY_COLUMNS[6:]}})
    heads = []
    for layer in range(ent.shape[1]):
        for head in range(ent.shape[2]):
            heads.append({"run": run.label, "step": step, "layer": layer, "head": head, "window": windows[layer],
                          "mean_entropy": float(np.nanmean(ent[:, layer, head])),
                          "mean_normalized_entropy": float(np.nanmean(norm[:, layer, head])),
                          "spearman_entropy": float(common.spearman(ent[:, layer, head], y)),
                          "spearman_normalized_entropy": float(common.spearman(norm[:, layer, head], y))})
    records = [{"run": run.label, "step": step, "index": e.index, "id": e.id, "category": e.category, "tokens": len(e),
                "memorization": float(yy), "entropy": float(a), "normalized_entropy": float(b)}
               for e, yy, a, b in zip(examples, y, values["entropy"], values["normalized_entropy"])]
    log(f"{NAME}: {run.label} step {step}: {len(examples)} records")
    return {"run": run, "step": step, "metric": metric, "summary": summary, "heads": heads, "records": records,
            "entropy": ent, "normalized_entropy": norm, "memorization": y, "categories": cats}


def describe(res: dict) -> str:
    run, step, metric = res["run"], res["step"], res["metric"]
    get = {(s["category"], s["measure"]): s for s in res["summary"]}
    e, ne = get[("all", "entropy")], get[("all", "normalized_entropy")]
    s = (f"{run.label} (checkpoint step {step}, {e['records']} training records): the mean attention entropy over "
         f"layers and heads is {fmt(e['mean'])} nats ({fmt(ne['mean'])} of its maximum); its correlation with "
         f"{metric} is Pearson {fmt(e['pearson'], 2)} (95% CI {fmt(e['pearson_lo'], 2)} to {fmt(e['pearson_hi'], 2)}), "
         f"Spearman {fmt(e['spearman'], 2)} (95% CI {fmt(e['spearman_lo'], 2)} to {fmt(e['spearman_hi'], 2)}); "
         f"with the "
         f"length-normalized entropy, Spearman {fmt(ne['spearman'], 2)} (95% CI {fmt(ne['spearman_lo'], 2)} to "
         f"{fmt(ne['spearman_hi'], 2)}).")
    tokens = np.array([r["tokens"] for r in res["records"]], float)
    length = float(common.spearman(tokens, res["memorization"])) if len(tokens) >= 3 else math.nan
    if math.isfinite(length):
        s += f" Memorization itself correlates with record length at Spearman {fmt(length, 2)}"
        s += (", so part of the raw relation is a length effect (entropy grows with the number of visible keys)."
              if abs(e["spearman"]) - abs(ne["spearman"]) > 0.2 else ".")
    rho = e["spearman"]
    if math.isfinite(e["spearman_lo"]) and (e["spearman_lo"] > 0 or e["spearman_hi"] < 0):
        s += (f" More memorized records have {'more concentrated (lower-entropy)' if rho < 0 else 'more diffuse'} "
              "attention, and the interval excludes zero.")
    else:
        s += " The interval includes zero: no clear relation at this scale."
    cats = [v for (c, m), v in get.items() if c != "all" and m == "entropy" and v["records"] >= 3
            and math.isfinite(v["spearman"])]
    if len(cats) > 1:
        lo, hi = min(cats, key=lambda v: v["spearman"]), max(cats, key=lambda v: v["spearman"])
        s += (f" Within categories, Spearman ranges from {fmt(lo['spearman'], 2)} ({lo['category']}) to "
              f"{fmt(hi['spearman'], 2)} ({hi['category']}).")
    heads = [h for h in res["heads"] if math.isfinite(h["spearman_entropy"])]
    if heads:
        h = min(heads, key=lambda h: h["spearman_entropy"])
        s += (f" The head whose concentration tracks memorization most is layer {h['layer']} head {h['head']} "
              f"(Spearman {fmt(h['spearman_entropy'], 2)}).")
    return s


def plot(results: list[dict], path: Path) -> Path:
    fig, axes = common.figure(len(results), 2, size=(12.0, 4.6 * len(results)))
    for r, res in enumerate(results):
        ax, hx = axes[2 * r], axes[2 * r + 1]
        colors = common.category_colors(res["categories"])
        x = np.array([rec["memorization"] for rec in res["records"]])
        y = np.array([rec["entropy"] for rec in res["records"]])
        for cat, color in colors.items():
            m = res["categories"] == cat
            ax.scatter(x[m], y[m], s=10, alpha=0.7, color=color, label=cat)
        e = next(s for s in res["summary"] if s["category"] == "all" and s["measure"] == "entropy")
        ax.set_title(f"{res['run'].label}, step {res['step']}: Spearman {fmt(e['spearman'], 2)} "
                     f"[{fmt(e['spearman_lo'], 2)}, {fmt(e['spearman_hi'], 2)}]", fontsize=9)
        ax.set_xlabel(f"{res['metric']} (teacher forcing)")
        ax.set_ylabel("attention entropy, mean over layers and heads (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, markerscale=1.5)
        n_layers, n_heads = res["entropy"].shape[1:]
        grid = np.array([[h["spearman_entropy"] for h in res["heads"] if h["layer"] == layer]
                         for layer in range(n_layers)])
        im = hx.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        hx.set_xticks(range(n_heads))
        hx.set_yticks(range(n_layers))
        hx.set_xlabel("head")
        hx.set_ylabel("layer")
        hx.set_title("Spearman(attention entropy, memorization) per layer and head", fontsize=9)
        if n_layers * n_heads <= 64:
            for (i, j), v in np.ndenumerate(grid):
                hx.text(j, i, fmt(v, 2), ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=hx)
    return common.save_figure(fig, path)


def _with_ci(s: dict, name: str) -> str:
    return f"{fmt(s[name], 2)} [{fmt(s[name + '_lo'], 2)}, {fmt(s[name + '_hi'], 2)}]"


def build(runs: Sequence[RunFolder], out: str | Path, *, step: int | None = None, metric: str = "exact_match",
          max_records: int | None = 500, tokens_per_batch: int = 8192, n_boot: int = 1000, seed: int = 0,
          cache_dir: str | Path | None = None, mesh: str | None = None) -> Artifact:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = [analyse(run, step=step, metric=metric, max_records=max_records, tokens_per_batch=tokens_per_batch,
                       n_boot=n_boot, seed=seed, cache_dir=cache_dir, mesh=mesh) for run in runs]
    csv_path = common.write_csv(out / f"{NAME}.csv", [s for r in results for s in r["summary"]], SUMMARY_COLUMNS)
    head_path = common.write_csv(out / f"{NAME}_heads.csv", [h for r in results for h in r["heads"]], HEAD_COLUMNS)
    rec_path = common.write_csv(out / f"{NAME}_records.csv", [x for r in results for x in r["records"]], RECORD_COLUMNS)
    png = plot(results, out / f"{NAME}.png")
    paragraph = " ".join(describe(r) for r in results)
    table = common.markdown_table(
        [[s["run"], s["category"], s["records"], fmt(s["mean"]), _with_ci(s, "pearson"), _with_ci(s, "spearman")]
         for r in results for s in r["summary"] if s["measure"] == "entropy"],
        ["run", "category", "records", "mean entropy", "Pearson [95% CI]", "Spearman [95% CI]"])
    md = common.write_markdown(out, NAME, TITLE, paragraph, png, [csv_path, head_path, rec_path], extra=table)
    return Artifact(NAME, TITLE, png, [csv_path, head_path, rec_path], md, paragraph, {"results": results})


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the last saved)")
    p.add_argument("--metric", default="exact_match", choices=("exact_match", "response_exact_match"),
                   help="memorization column of the snapshot at that step (default: exact_match)")
    p.add_argument("--max-records", type=int, default=500, metavar="N",
                   help="training records, category-balanced; 0 = all (default: 500)")
    p.add_argument("--tokens-per-batch", type=int, default=8192, metavar="N", help="padded tokens per forward pass")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-cache", default=None, metavar="DIR",
                   help="keep exported checkpoints here for reuse (default: a temporary folder)")
    p.add_argument("--mesh", default=None, metavar="D,F,T", help="device mesh for the model (default: all on data)")
    args = p.parse_args(argv)
    return common.run_cli(lambda: build(
        common.open_runs(args.runs, args.labels), args.out, step=args.step, metric=args.metric,
        max_records=args.max_records or None, tokens_per_batch=args.tokens_per_batch, n_boot=args.bootstrap,
        seed=args.seed, cache_dir=args.export_cache, mesh=args.mesh))


if __name__ == "__main__":
    sys.exit(main())
