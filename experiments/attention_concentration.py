"""Attention concentration (Zeng et al.): how concentrated the attention that produces a training
record's response is over the record's prompt, per layer and head, read from the model itself, and its
correlation with extraction memorization (experiments.extraction_memorization) per record and per
category, at each checkpoint and as a change from step 0. Run through `python -m experiments.zeng`.

Each record (tokenized as in training, prompt and response) runs alone under teacher forcing. The
queries are the positions that produce the response tokens (position j predicts token j + 1: from
the last prompt token to the second-to-last response token); the keys are the prompt's tokens. For
each layer, head and such query, its attention over the prompt keys it sees (local GPT-Neo layers see
only their window), renormalized to sum to 1, gives
- `entropy`: -sum_k q log q (nats);
- `normalized_entropy`: entropy / log(number of prompt keys seen), in [0, 1] (1 = uniform);
- `top_k_mass`: the share of that attention on the k keys that get most of it (k = `--top-k`, 5);
- `prompt_mass`: the share of the query's whole attention that goes to the prompt (before renormalizing).
A record's value per layer and head is the mean over its queries (queries that see no prompt key are
left out; `normalized_entropy` needs two); its concentration is the mean over layers and heads.

The probabilities are the model's own: the forward pass runs with the "intermediates" collection
mutable, so every layer sows the float32 softmax it weighs its values with
(`mbc_jax.models.sown_attention_probs`). All layers' probabilities of a batch are held at once
(layers x rows x heads x T^2 floats): lower `--tokens-per-batch` if that does not fit.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments.common import fmt
from mbc_jax.models import sown_attention_probs
from mbc_jax.models.transformer import attention_mask
from mbc_jax.sharding import batch_divisor, batch_sharding

MEASURES = ("entropy", "normalized_entropy", "top_k_mass", "prompt_mass")
HEADLINE = "normalized_entropy"
DEFAULT_TOP_K = 5
CORRELATION_COLUMNS = ("run", "step", "level", "change", "measure", "n", "pearson", "pearson_lo", "pearson_hi",
                       "spearman", "spearman_lo", "spearman_hi")
HEAD_COLUMNS = ("run", "step", "layer", "head", "window", *[f"mean_{m}" for m in MEASURES],
                *[f"spearman_{m}" for m in MEASURES])


# ----------------------------------------------------------------------------- attention from the model


def prompt_stats(probs, mask, prompt_end, response_end, top_k: int):
    """Per row and head, over the queries that produce the response ([prompt_end - 1, response_end - 1)),
    of one layer: sums of entropy, normalized entropy, top-k mass and prompt mass of the attention over
    the prompt keys ([0, prompt_end)), and the query counts (>= 1 prompt key seen; >= 2 for the
    normalized entropy). probs [B, H, T, T], mask [B, 1, T, T] (which keys each query sees)."""
    t = jnp.arange(probs.shape[-1])
    prompt = t[None, :] < prompt_end[:, None]  # [B, Tk]
    query = (t[None, :] >= prompt_end[:, None] - 1) & (t[None, :] < response_end[:, None] - 1)  # [B, Tq]
    seen = mask & prompt[:, None, None, :]  # [B, 1, Tq, Tk]
    n_seen = seen.sum(-1)  # [B, 1, Tq]
    p = jnp.where(seen, probs, 0.0)
    mass = p.sum(-1)  # [B, H, Tq]
    q = p / jnp.where(mass > 0, mass, 1.0)[..., None]
    ent = -jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0).sum(-1)
    norm = ent / jnp.log(jnp.maximum(n_seen, 2).astype(jnp.float32))
    top = jax.lax.top_k(q, min(top_k, q.shape[-1]))[0].sum(-1)
    ok = query[:, None, :] & (n_seen >= 1) & (mass > 0)  # [B, H, Tq]
    ok2 = ok & (n_seen >= 2)
    total = lambda x, m: jnp.where(m, x, 0.0).sum(-1)  # noqa: E731
    return (total(ent, ok), total(norm, ok2), total(top, ok), total(mass, ok), ok.sum(-1), ok2.sum(-1))


@functools.partial(jax.jit, static_argnames=("module", "top_k"))
def _concentration(module, top_k: int, params, ids, pos, seg, prompt_end, response_end):
    _, state = module.apply({"params": params}, ids, pos, seg, mutable=["intermediates"])
    probs = sown_attention_probs(state)  # [L, B, H, T, T]
    windows = jnp.asarray(module.cfg.layer_windows, jnp.int32)
    masks = jax.vmap(lambda window: attention_mask(pos, seg, pos, seg, window))(windows)  # [L, B, 1, T, T]
    stats = functools.partial(prompt_stats, top_k=top_k)
    return jax.vmap(stats, in_axes=(0, 0, None, None))(probs, masks, prompt_end, response_end)


@functools.partial(jax.jit, static_argnames=("module",))
def _probs(module, params, ids, pos, seg):
    logits, state = module.apply({"params": params}, ids, pos, seg, mutable=["intermediates"])
    return logits, sown_attention_probs(state)


def _device(model, *arrays):
    pad = -len(arrays[0]) % batch_divisor(model.mesh)
    shard = batch_sharding(model.mesh, 2)
    out = []
    for a in arrays:
        a = np.asarray(a, np.int32)
        a = np.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
        out.append(jax.device_put(a, shard if a.ndim == 2 else batch_sharding(model.mesh, 1)))
    return out


def attention_probs(model, input_ids, positions=None, segment_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """(logits [B, T, V], attention probabilities [L, B, H, T_query, T_key]) of `model` (an
    `mbc_jax.models.Model`) on a batch; defaults as the model's: positions 0..T-1, one segment."""
    ids = np.asarray(input_ids)
    b, t = ids.shape
    pos = np.broadcast_to(np.arange(t), (b, t)) if positions is None else np.asarray(positions)
    seg = np.ones((b, t), np.int32) if segment_ids is None else np.asarray(segment_ids)
    logits, probs = _probs(model.module, model.params, *_device(model, ids, pos, seg))
    return np.asarray(logits)[:b], np.asarray(probs)[:, :b]


def prompt_concentration(model, examples: Sequence, spans: Sequence[tuple[int, int]], *, top_k: int = DEFAULT_TOP_K,
                         tokens_per_batch: int = 8192) -> dict[str, np.ndarray]:
    """{measure: [records, layers, heads]} of the attention of each example's response positions over
    its prompt; spans[i] = (prompt_end, response_end) of example i. nan where a layer has no such
    query. Examples run one per row, right-padded to a power-of-two length (at least 64: few compiles)."""
    shape = (len(examples), model.config.num_layers, model.config.num_heads)
    out = {m: np.full(shape, np.nan) for m in MEASURES}
    order = sorted(range(len(examples)), key=lambda i: spans[i][1])
    start = 0
    while start < len(order):
        t = max(64, 1 << (spans[order[start]][1] - 1).bit_length())
        members = [i for i in order[start:] if spans[i][1] <= t][:max(1, tokens_per_batch // t)]
        rows = len(members)
        ids, seg = np.zeros((rows, t), np.int32), np.zeros((rows, t), np.int32)
        for r, i in enumerate(members):
            end = spans[i][1]
            ids[r, :end], seg[r, :end] = examples[i].input_ids[:end], 1
        pos = np.broadcast_to(np.arange(t), (rows, t))
        r0 = np.array([spans[i][0] for i in members])
        r1 = np.array([spans[i][1] for i in members])
        got = [np.asarray(x)[:, :rows] for x in _concentration(model.module, top_k, model.params,
                                                                *_device(model, ids, pos, seg, r0, r1))]
        ent, norm, top, mass, n1, n2 = got
        with np.errstate(invalid="ignore", divide="ignore"):
            for name, total, n in (("entropy", ent, n1), ("normalized_entropy", norm, n2), ("top_k_mass", top, n1),
                                   ("prompt_mass", mass, n1)):
                out[name][members] = np.where(n > 0, total / np.maximum(n, 1), np.nan).transpose(1, 0, 2)
        start += rows
    return out


def attention_map(model, example, span: tuple[int, int]) -> np.ndarray:
    """[response queries, keys]: the attention of the positions that produce the response over every
    key up to the response's end, averaged over layers and heads."""
    r0, r1 = span
    _, probs = attention_probs(model, example.input_ids[None, :r1])
    return probs[:, 0, :, r0 - 1:r1 - 1, :r1].mean((0, 1))


# ----------------------------------------------------------------------------- against extraction


def record_means(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{measure: [records]}: the mean over layers and heads of each record (its finite entries)."""
    with warnings.catch_warnings():  # a record with no finite entry: nan, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return {m: np.nanmean(v.reshape(len(v), -1), axis=1) for m, v in values.items()}


def correlations(records: list[dict], *, score: str = "rouge_l", n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Pearson and Spearman (bootstrap CIs) of each measure against the extraction `score`, per run and
    step: over records ("record") and over category means ("category"; the categories are resampled),
    of the values at the step ("absolute") and of their change from step 0 ("from_step0")."""
    out = []
    for run, step, at, base in common.by_run_and_step(records):
        for change in ("absolute", "from_step0"):
            if change == "from_step0" and (step == 0 or not base):
                continue
            pairs = [r for r in at if change == "absolute" or r["index"] in base]

            def value(r, key, change=change, base=base):
                return r[key] - base[r["index"]][key] if change == "from_step0" else r[key]

            cats = np.array([r["category"] for r in pairs], dtype=object)
            y = np.array([value(r, score) for r in pairs], float)
            for measure in MEASURES:
                x = np.array([value(r, measure) for r in pairs], float)
                by_cat = [(np.nanmean(x[cats == c]), np.nanmean(y[cats == c])) for c in sorted(set(cats))]
                for level, (xs, ys) in (("record", (x, y)), ("category", tuple(zip(*by_cat)) or ((), ()))):
                    c = common.correlation(xs, ys, n_boot=n_boot, seed=seed)
                    out.append({"run": run, "step": step, "level": level, "change": change, "measure": measure,
                                **{k: c[k] for k in CORRELATION_COLUMNS[5:]}})
    return out


def head_rows(run: str, step: int, values: dict[str, np.ndarray], score: np.ndarray, windows: Sequence[int]
              ) -> list[dict]:
    """Per layer and head: the mean of each measure over records and its Spearman with the score."""
    rows = []
    for layer in range(values[HEADLINE].shape[1]):
        for head in range(values[HEADLINE].shape[2]):
            row = {"run": run, "step": step, "layer": layer, "head": head, "window": windows[layer]}
            for m in MEASURES:
                v = values[m][:, layer, head]
                ok = np.isfinite(v)
                row[f"mean_{m}"] = float(v[ok].mean()) if ok.any() else math.nan
                row[f"spearman_{m}"] = float(common.spearman(v[ok], score[ok])) if ok.sum() >= 3 else math.nan
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- figures


def plot(records: list[dict], corr: list[dict], heads: list[dict], path: Path, score: str = "rouge_l") -> Path:
    """Per run: records and category means at the last step (normalized entropy vs extraction), the
    correlations at every step (record and category level, absolute and from step 0), and the per-head
    Spearman grid at the last step."""
    runs = list(dict.fromkeys(r["run"] for r in records))
    fig, axes = common.figure(len(runs), 3, size=(17.0, 4.4 * len(runs)))
    for r, run in enumerate(runs):
        ax, cx, hx = axes[3 * r: 3 * r + 3]
        last = max(x["step"] for x in records if x["run"] == run)
        at = [x for x in records if x["run"] == run and x["step"] == last]
        colors = common.category_colors(x["category"] for x in at)
        for cat, color in colors.items():
            sel = [x for x in at if x["category"] == cat]
            xs, ys = [x[HEADLINE] for x in sel], [x[score] for x in sel]
            ax.scatter(xs, ys, s=9, alpha=0.5, color=color)
            ax.scatter([np.nanmean(xs)], [np.nanmean(ys)], s=90, color=color, edgecolor="black", label=cat)
        ax.set_xlabel("normalized entropy of response -> prompt attention (1 = uniform)")
        ax.set_ylabel(f"extraction {score}")
        ax.set_title(f"{run}, step {last}: records (dots), categories (circles)", fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        for (level, change), style in ((("record", "absolute"), "-o"), (("category", "absolute"), "-s"),
                                       (("record", "from_step0"), "--o"), (("category", "from_step0"), "--s")):
            rows = sorted((c for c in corr if c["run"] == run and c["measure"] == HEADLINE and c["level"] == level
                           and c["change"] == change), key=lambda c: c["step"])
            if rows:
                x = np.array([c["step"] for c in rows])
                y = np.array([c["spearman"] for c in rows])
                cx.errorbar(x, y, yerr=np.abs(np.array([[c["spearman_lo"] for c in rows],
                                                        [c["spearman_hi"] for c in rows]]) - y),
                            fmt=style, ms=4, capsize=2, label=f"{level}, {change.replace('_', ' ')}")
        cx.axhline(0, color="black", lw=0.8)
        cx.set_ylim(-1.05, 1.05)
        cx.set_xlabel("step")
        cx.set_ylabel(f"Spearman(normalized entropy, {score})")
        cx.set_title("correlation with 95% bootstrap CI", fontsize=9)
        cx.legend(fontsize=6)
        cx.grid(alpha=0.3)
        mine = [h for h in heads if h["run"] == run and h["step"] == last]
        n_layers, n_heads = max(h["layer"] for h in mine) + 1, max(h["head"] for h in mine) + 1
        grid = np.full((n_layers, n_heads), np.nan)
        for h in mine:
            grid[h["layer"], h["head"]] = h[f"spearman_{HEADLINE}"]
        im = hx.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        hx.set_xlabel("head")
        hx.set_ylabel("layer")
        hx.set_title(f"Spearman(normalized entropy, {score}) per head, step {last}", fontsize=9)
        if n_layers * n_heads <= 64:
            for (i, j), v in np.ndenumerate(grid):
                hx.text(j, i, fmt(v, 2), ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=hx)
    return common.save_figure(fig, path)


def plot_maps(maps: list[dict], path: Path) -> Path:
    """One row per run: the attention map of a memorized and of an unmemorized record of one category.
    maps[i] = {"run", "step", "category", "pairs": [(label, record dict, map [Tq, Tk], prompt_end)]}."""
    fig, axes = common.figure(max(1, len(maps)), 2, size=(12.0, 4.2 * max(1, len(maps))))
    for r, m in enumerate(maps):
        for k, (label, rec, grid, r0) in enumerate(m["pairs"]):
            ax = axes[2 * r + k]
            im = ax.imshow(grid, cmap="viridis", aspect="auto", interpolation="nearest")
            ax.axvline(r0 - 0.5, color="white", lw=1.0, ls="--")
            ax.set_xlabel(f"key position (prompt: 0-{r0 - 1}, dashed line = response starts)")
            ax.set_ylabel("query producing response token")
            ax.set_title(f"{m['run']}, step {m['step']}, {m['category']}: {label} record {rec['id']}\n"
                         f"ROUGE-L {fmt(rec['rouge_l'], 2)}, normalized entropy {fmt(rec[HEADLINE], 2)}, "
                         f"top-k mass {fmt(rec['top_k_mass'], 2)} (mean of layers and heads)", fontsize=8)
            fig.colorbar(im, ax=ax)
    return common.save_figure(fig, path)
