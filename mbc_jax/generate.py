"""Batched KV-cache decoding: greedy, temperature, top-k, top-p, repetition penalty; output entropy.

    gens = generate(model, [prompt_ids, ...], SamplingConfig(top_p=0.9, temperature=0.7))
    gens[0].output_ids, gens[0].entropy, gens[0].stopped     # "eos" or "length"

One jitted program per (rows, prompt bucket, max_new_tokens) shape: the prompts of a batch are
LEFT-padded to a multiple of `bucket` (padding has segment id 0, so no real token ever attends to
it, and every row's positions start at 0), prefilled in one forward pass, then decoded one token
per step in a `lax.while_loop` that stops as soon as every row has finished. Rows are split over
the mesh's (data, fsdp) axes.

Logits processing follows Hugging Face `generate`, in its order:
1. repetition penalty (CTRL rule): for every token already in the row's sequence (prompt +
   generated so far; left padding excluded), a logit l becomes l / r if l > 0 else l * r;
2. temperature: l / T;
3. top-k: tokens below the k-th largest logit get -inf (ties with it are kept);
4. top-p (nucleus): the smallest set of most probable tokens whose probability reaches p is kept
   (a token is kept iff the probability of the tokens strictly more probable than it is < p; ties
   at the boundary are kept); the rest get -inf.
Greedy decoding applies only the penalty, then takes the argmax (as HF's do_sample=False).
All settings are traced values, so one compiled program serves every sampling configuration;
the vocabulary sort behind top-k/top-p runs only when one of them is on (`lax.cond`).

Entropy (nats), recorded at every generated token:
- `entropy`: of the model's full predictive distribution, softmax of the raw logits at
  temperature 1, before the penalty, temperature, top-k and top-p: the "entropy of the output
  distribution" along the model's own continuation (the paper's Table 1 sampling column; its
  teacher-forcing counterpart is `mbc_jax.scoring`'s per-record entropy along the reference).
- `sampling_entropy`: of the distribution the token was actually drawn from, softmax of the
  processed logits (penalty, temperature, top-k, top-p truncation, renormalized); 0 for greedy.
Per record both are averaged over its generated tokens, the EOS step included.

Sampling is a pure function of (seed, row key, step): row b draws with
`fold_in(fold_in(key(seed), row_key[b]), step)`, so a record's sample does not depend on which
other prompts share its batch, the batch size or the mesh, up to float rounding of its logits
(row_key defaults to the prompt's position in the list; the CLI passes the record index, so
`--limit` or a different `--batch-size` keep each record's sample).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mbc_jax import UserError
from mbc_jax.sharding import batch_divisor, batch_sharding, constrain

# Paper defaults (nucleus sampling for the judged answers).
DEFAULT_TOP_P = 0.9
DEFAULT_TEMPERATURE = 0.7
DEFAULT_REPETITION_PENALTY = 1.2
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick each token. `greedy` ignores temperature, top_k and top_p (not the penalty)."""

    greedy: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0  # 0: off
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY  # 1.0: off
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ignore_eos: bool = False

    def validate(self) -> "SamplingConfig":
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.repetition_penalty > 0:
            raise UserError(f"repetition penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if not self.greedy:
            if not (self.temperature > 0 and math.isfinite(self.temperature)):
                raise UserError(f"temperature must be > 0, got {self.temperature} (use greedy decoding for the argmax)")
            if not 0 < self.top_p <= 1:
                raise UserError(f"top_p must be in (0, 1], got {self.top_p} (1 = off)")
            if self.top_k < 0:
                raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        return self

    def describe(self) -> str:
        s = "greedy" if self.greedy else (f"sampling T={self.temperature:g} top_p={self.top_p:g}"
                                          + (f" top_k={self.top_k}" if self.top_k else ""))
        s += f", repetition penalty {self.repetition_penalty:g}, max {self.max_new_tokens} new tokens"
        return s + (", ignoring EOS" if self.ignore_eos else "")


@dataclasses.dataclass
class Generation:
    """One prompt's continuation. `output_ids` ends with the EOS token when stopped == "eos"."""

    output_ids: np.ndarray  # int32 [num_tokens]
    token_entropy: np.ndarray  # float32 [num_tokens], full softmax of the raw logits
    token_sampling_entropy: np.ndarray  # float32 [num_tokens], the distribution sampled from
    stopped: str  # "eos" | "length"

    @property
    def num_tokens(self) -> int:
        return int(self.output_ids.shape[0])

    @property
    def entropy(self) -> float:
        return float(self.token_entropy.mean()) if self.num_tokens else float("nan")

    @property
    def sampling_entropy(self) -> float:
        return float(self.token_sampling_entropy.mean()) if self.num_tokens else float("nan")


# ------------------------------------------------------------------------------ logits processing


def entropy(logits: jax.Array) -> jax.Array:
    """Entropy (nats) of softmax(logits) over the last axis, in float32; -inf logits contribute 0."""
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.where(jnp.isneginf(logits), 0.0, jnp.exp(logp) * logp), axis=-1)


def repetition_penalty(logits: jax.Array, present: jax.Array, penalty: jax.Array | float) -> jax.Array:
    """CTRL rule as HF applies it: where `present`, l -> l / penalty if l > 0 else l * penalty."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(present, penalized, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits per row (and any tied with the k-th); the rest -> -inf."""
    return _sorted_filters(logits.astype(jnp.float32), k, 1.0)


def top_p_filter(logits: jax.Array, p: jax.Array | float) -> jax.Array:
    """Nucleus: keep a token iff the tokens more probable than it hold < p of the probability mass."""
    return _sorted_filters(logits.astype(jnp.float32), 0, p)


def _sorted_filters(x: jax.Array, k: jax.Array | int, p: jax.Array | float) -> jax.Array:
    """top-k (k <= 0: off) then top-p (p >= 1: off) over the last axis, from one descending sort."""
    vocab = x.shape[-1]
    desc = -jnp.sort(-x, axis=-1)
    k = jnp.where(k <= 0, vocab, jnp.minimum(k, vocab))
    kth = jnp.take_along_axis(desc, jnp.broadcast_to(k - 1, desc.shape[:-1] + (1,)).astype(jnp.int32), axis=-1)
    desc = jnp.where(desc >= kth, desc, -jnp.inf)  # ties with the k-th are kept, as in HF
    x = jnp.where(x >= kth, x, -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    # probability mass strictly ahead of each token in the sorted order
    before = jnp.concatenate([jnp.zeros_like(probs[..., :1]), jnp.cumsum(probs, axis=-1)[..., :-1]], axis=-1)
    p = jnp.where(p >= 1, jnp.inf, p)
    cutoff = jnp.min(jnp.where(before < p, desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(x >= cutoff, x, -jnp.inf)


class Settings(NamedTuple):
    """A SamplingConfig as traced scalars: changing them never recompiles."""

    greedy: Any
    temperature: Any
    top_k: Any
    top_p: Any
    penalty: Any
    ignore_eos: Any

    @classmethod
    def of(cls, cfg: SamplingConfig) -> "Settings":
        t, k, p = (1.0, 0, 1.0) if cfg.greedy else (cfg.temperature, cfg.top_k, cfg.top_p)  # greedy: neutral
        return cls(np.bool_(cfg.greedy), np.float32(t), np.int32(k), np.float32(p),
                   np.float32(cfg.repetition_penalty), np.bool_(cfg.ignore_eos))


def process_logits(raw: jax.Array, present: jax.Array, s: Settings) -> jax.Array:
    """Raw logits [B, V] -> the logits the next token is drawn from, in HF's order.

    Greedy: only the penalty (the argmax of the result is the token). The sort behind top-k/top-p
    runs only when one of them is on (`lax.cond`: one branch executes).
    """
    x = repetition_penalty(raw.astype(jnp.float32), present, s.penalty)  # penalty 1: exact identity

    def warp(x):
        x = x / s.temperature  # temperature 1: exact identity
        needs_sort = (s.top_k > 0) | (s.top_p < 1)
        return jax.lax.cond(needs_sort, lambda y: _sorted_filters(y, s.top_k, s.top_p), lambda y: y, x)

    return jax.lax.cond(s.greedy, lambda y: y, warp, x)


# ------------------------------------------------------------------------------ the decode program


@functools.partial(jax.jit, static_argnames=("module", "max_new"))
def _decode(module, max_new: int, params, ids, seg, live, row_keys, seed, eos_ids, pad_id, settings: Settings):
    """ids/seg [B, T] left-padded prompts; live [B] (False: a filler row). Returns tokens [B, N],
    entropies [B, N] x 2, number of tokens [B], stopped-at-EOS [B]."""
    mesh = module.mesh
    b, t = ids.shape
    n = max_new
    cfg = module.cfg
    real = seg > 0
    positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0).astype(jnp.int32)
    lengths = real.sum(axis=1).astype(jnp.int32)

    from mbc_jax.models import init_cache  # local: keep `mbc_jax.generate` importable without models

    cache = init_cache(cfg, b, t + n)
    for name in ("k", "v"):
        cache[name] = constrain(cache[name], mesh, (None, "batch", "length", "act_heads", None))
    for name in ("pos", "seg"):
        cache[name] = constrain(cache[name], mesh, ("batch", "length"))

    def last_logits(hidden):
        return module.apply({"params": params}, hidden[:, -1], method=type(module).logits).astype(jnp.float32)

    hidden, cache = module.apply({"params": params}, ids, positions, seg, cache=cache, return_hidden=True)
    logits = last_logits(hidden)

    rows = jnp.arange(b)
    vocab = logits.shape[-1]
    present = jnp.zeros((b, vocab), bool).at[rows[:, None], jnp.where(real, ids, vocab)].set(True, mode="drop")
    present = constrain(present, mesh, ("batch", None))
    base = jax.random.key(seed)
    keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(row_keys)

    state = dict(
        step=jnp.zeros((), jnp.int32), logits=logits, cache=cache, present=present,
        finished=~live, eos=jnp.zeros((b,), bool), count=jnp.zeros((b,), jnp.int32),
        tokens=jnp.full((b, n), pad_id, jnp.int32),
        ent=jnp.zeros((b, n), jnp.float32), sent=jnp.zeros((b, n), jnp.float32),
    )

    def cond(s):
        return (s["step"] < n) & ~jnp.all(s["finished"])

    def body(s):
        step, raw, done = s["step"], s["logits"], s["finished"]
        x = process_logits(raw, s["present"], settings)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        sampled = jax.vmap(jax.random.categorical)(step_keys, x)
        tok = jnp.where(settings.greedy, jnp.argmax(x, axis=-1), sampled).astype(jnp.int32)
        sent = jnp.where(settings.greedy, 0.0, entropy(x))
        tok = jnp.where(done, pad_id, tok)
        active = ~done
        hit_eos = active & jnp.any(tok[:, None] == eos_ids[None, :], axis=-1) & ~settings.ignore_eos
        out = dict(
            step=step + 1,
            finished=done | hit_eos,
            eos=s["eos"] | hit_eos,
            count=s["count"] + active.astype(jnp.int32),
            tokens=s["tokens"].at[:, step].set(tok),
            ent=s["ent"].at[:, step].set(jnp.where(active, entropy(raw), 0.0)),
            sent=s["sent"].at[:, step].set(jnp.where(active, sent, 0.0)),
            present=s["present"].at[rows, tok].set(True),
        )
        # feed the token: next position of each row is its prompt length + step
        hidden, out["cache"] = module.apply(
            {"params": params}, tok[:, None], (lengths + step)[:, None], jnp.ones((b, 1), jnp.int32),
            cache=s["cache"], return_hidden=True)
        out["logits"] = last_logits(hidden)
        return out

    s = jax.lax.while_loop(cond, body, state)
    return s["tokens"], s["ent"], s["sent"], s["count"], s["eos"]


# ------------------------------------------------------------------------------ host side


def bucket_length(n: int, bucket: int = DEFAULT_BUCKET) -> int:
    return max(bucket, -(-n // bucket) * bucket)


def batch_rows(n_prompts: int, batch_size: int, mesh: Any) -> int:
    """Rows of each decoding batch: min(batch_size, n_prompts) rounded up to a multiple of data x fsdp."""
    div = batch_divisor(mesh)
    return -(-min(batch_size, max(n_prompts, 1)) // div) * div


MAX_EOS_IDS = 8  # EOS ids are passed as a fixed-size vector, so their number never recompiles


def _eos_array(eos_token_id: int | Sequence[int] | None) -> np.ndarray:
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, (int, np.integer)):
        ids = [int(eos_token_id)]
    else:
        ids = sorted({int(i) for i in eos_token_id})
    if len(ids) > MAX_EOS_IDS:
        raise UserError(f"at most {MAX_EOS_IDS} EOS token ids are supported, got {len(ids)}")
    return np.asarray(ids + [-1] * (MAX_EOS_IDS - len(ids)), np.int32)  # -1 never matches a token


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig = SamplingConfig(),
    *,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 32,
    bucket: int = DEFAULT_BUCKET,
    row_keys: Sequence[int] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Continue every prompt (a list of token ids, at least one) with `model` (an `mbc_jax.models.Model`).

    Prompts are grouped longest first into batches of `batch_size` rows (rounded up to a multiple
    of the mesh's data x fsdp size; a last, smaller batch is filled with idle rows so the shape and
    the compiled program stay the same). `eos_token_id` (default: the model config's) stops a row
    unless `config.ignore_eos`. `row_keys[i]` (default i) picks prompt i's random stream.
    `on_batch(prompts_done, tokens_generated)` is called after each batch (progress bars).
    Results come back in the order of `prompts`.
    """
    config.validate()
    cfg = model.config
    if eos_token_id is None:
        eos_token_id = cfg.eos_token_id
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    prompts = [np.asarray(p, np.int64).reshape(-1) for p in prompts]
    if row_keys is None:
        row_keys = range(len(prompts))
    row_keys = [int(k) for k in row_keys]
    if len(row_keys) != len(prompts):
        raise ValueError(f"{len(row_keys)} row keys for {len(prompts)} prompts")
    for i, p in enumerate(prompts):
        if p.size == 0:
            raise UserError(f"prompt {i} is empty: generation needs at least one prompt token")
        if p.min() < 0 or p.max() >= cfg.vocab_size:
            raise UserError(f"prompt {i} has a token id outside the model's vocabulary [0, {cfg.vocab_size})")
        if p.size + config.max_new_tokens > cfg.max_position_embeddings:
            raise UserError(
                f"prompt {i} has {p.size} tokens; with {config.max_new_tokens} new tokens that exceeds the "
                f"model's {cfg.max_position_embeddings} positions: shorten the prompts or generate fewer tokens")
    if batch_size < 1 or bucket < 1:
        raise UserError(f"batch size and bucket must be >= 1, got {batch_size} and {bucket}")

    rows = batch_rows(len(prompts), batch_size, model.mesh)
    order = sorted(range(len(prompts)), key=lambda i: (-prompts[i].size, i))
    scalars = dict(seed=np.uint32(seed & 0xFFFFFFFF), eos_ids=_eos_array(eos_token_id), pad_id=np.int32(pad),
                   settings=Settings.of(config))
    shard2, shard1 = batch_sharding(model.mesh, 2), batch_sharding(model.mesh, 1)
    results: list[Generation | None] = [None] * len(prompts)
    done = tokens_out = 0
    for start in range(0, len(order), rows):
        members = order[start:start + rows]
        t = bucket_length(max(prompts[i].size for i in members), bucket)
        ids = np.full((rows, t), pad, np.int32)
        seg = np.zeros((rows, t), np.int32)
        live = np.zeros((rows,), bool)
        keys = np.zeros((rows,), np.uint32)
        for r, i in enumerate(members):
            p = prompts[i]
            ids[r, t - p.size:] = p
            seg[r, t - p.size:] = 1
            live[r] = True
            keys[r] = row_keys[i] & 0xFFFFFFFF
        seg[len(members):, -1] = 1  # idle rows: one token so attention has something to look at
        put = lambda a: jax.device_put(a, shard2 if a.ndim == 2 else shard1)  # noqa: E731
        toks, ent, sent, count, eos = jax.device_get(_decode(
            model.module, config.max_new_tokens, model.params, put(ids), put(seg), put(live), put(keys), **scalars))
        for r, i in enumerate(members):
            k = int(count[r])
            results[i] = Generation(toks[r, :k].copy(), ent[r, :k].copy(), sent[r, :k].copy(),
                                    "eos" if eos[r] else "length")
            tokens_out += k
        done += len(members)
        if on_batch is not None:
            on_batch(done, tokens_out)
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------ prompts from records


@dataclasses.dataclass
class Prompt:
    """What to generate from for one record, and what the output file says about it."""

    index: int
    id: str
    category: str
    ids: np.ndarray  # int32, the prompt tokens exactly as training tokenizes them
    text: str  # the prompt as text (what a judge reads)
    reference: str | None  # the held-out response, if the record has one
    truncated_from: int = 0  # original prompt length when the prompt was left-truncated, else 0


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Token ids -> text, special tokens dropped, no "clean-up" (it would corrupt BPE text)."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def build_prompts(records: Sequence[Any], tokenizer: Any, template: Any = None, *,
                  vocab_size: int | None = None, max_prompt_length: int | None = None) -> list[Prompt]:
    """Prompts of records of any `mbc_jax.data` schema, tokenized exactly as training tokenizes them.

    - dialogue schemas (dolly, chat, prompt_completion): every token before the LAST response, i.e.
      the template rendered up to and including the assistant prefix (earlier turns, with their EOS,
      included); the reference is the last response's text;
    - tokens: input_ids[:prompt_length] (the reference is the rest, decoded);
    - text: the whole text is the prompt (a free continuation; no reference).
    A prompt longer than `max_prompt_length` keeps its LAST max_prompt_length tokens (the end of
    the prompt holds the assistant prefix the model must continue); `truncated_from` says so.
    """
    from mbc_jax.data import Template, tokenize

    template = template or Template()
    examples, report = tokenize(records, tokenizer, template, max_length=1 << 62, vocab_size=vocab_size)
    assert len(examples) == len(records), report.summary()

    def decode(ids) -> str:
        return decode_text(tokenizer, ids) if tokenizer is not None else ""

    out = []
    for rec, ex in zip(records, examples):
        ids, mask = ex.input_ids, ex.response_mask
        reference = None
        if rec.schema == "tokens" or rec.input_ids is not None:
            cut = rec.prompt_length or 0
            if cut < len(ids):
                reference = decode(ids[cut:])
            text = decode(ids[:cut])
        elif rec.text is not None:
            cut, text = len(ids), rec.text
        else:
            # start of the last run of response tokens
            last = int(np.flatnonzero(mask)[-1])
            cut = last
            while cut > 0 and mask[cut - 1]:
                cut -= 1
            text = template.prompt(rec)
            reference = [c for r, c in rec.turns if r == "assistant"][-1]
        if cut == 0:
            raise UserError(f"{rec.source}: the prompt is empty (prompt_length 0): nothing to generate from; "
                            "give the record a prompt_length > 0")
        prompt = ids[:cut]
        truncated_from = 0
        if max_prompt_length is not None and cut > max_prompt_length:
            prompt, truncated_from = prompt[cut - max_prompt_length:], cut
        out.append(Prompt(rec.index, rec.id, rec.category, prompt.astype(np.int32), text, reference, truncated_from))
    return out


def summarize(gens: Sequence[Generation], seconds: float) -> dict:
    """Aggregate numbers of a run (entropies: mean over records of the per-record means)."""
    n_tok = sum(g.num_tokens for g in gens)
    ent = [g.entropy for g in gens if g.num_tokens]
    sent = [g.sampling_entropy for g in gens if g.num_tokens]
    return {
        "records": len(gens), "tokens": n_tok, "seconds": seconds,
        "tokens_per_second": n_tok / seconds if seconds > 0 else float("nan"),
        "mean_entropy": float(np.mean(ent)) if ent else float("nan"),
        "mean_sampling_entropy": float(np.mean(sent)) if sent else float("nan"),
        "stopped_eos": sum(g.stopped == "eos" for g in gens),
        "mean_tokens": n_tok / len(gens) if gens else 0.0,
    }
