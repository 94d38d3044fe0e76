"""Batched KV-cache decoding: `generate` continues token-id prompts and records the output entropy.

    gens = generate(model, [prompt_ids, ...], SamplingConfig(top_p=0.9, temperature=0.7))
    gens[0].output_ids, gens[0].entropy, gens[0].stopped     # "eos" or "length"

One jitted program per (rows, prompt bucket, max_new_tokens) shape: the prompts of a batch are
LEFT-padded to a bucket length (`bucket_length`: `bucket` times a power of two or 1.5 times one;
padding has segment id 0, so no real token ever attends to it, and every row's positions start at 0),
prefilled in one forward pass, then decoded one token per step in a `lax.while_loop` that stops as soon
as every row has finished. Rows are split over the mesh's (data, fsdp) axes. Each token is picked as
`mbc_jax.generate.sampling` says.
The cache holds prompt bucket + max_new_tokens slots, one [B, KV heads, S, D] buffer per layer, written
in place at every step; the layers' weights are unstacked once before the loop (`unstack_layers`: they
sit twice in memory while decoding). Nothing goes back to the host until the batch is done. Where the
time goes, before and after: benchmarks/README.md, "Generation".

Entropy (nats), recorded at every generated token:
- `entropy`: of the model's full predictive distribution, softmax of the raw logits at
  temperature 1, before the penalty, temperature, top-k and top-p: the "entropy of the output
  distribution" along the model's own continuation (one reading of the paper's Table 1 sampling
  column; its teacher-forcing counterpart is `mbc_jax.scoring`'s `response_entropy` along the
  reference response).
- `sampling_entropy`: of the distribution the token was actually drawn from, softmax of the
  processed logits (penalty, temperature, top-k, top-p truncation, renormalized); 0 for greedy.
  The other reading of Table 1's sampling column: the paper does not state which it used.
Per record both are averaged over its generated tokens, the EOS step included.

Sampling is a pure function of (seed, row key, step): row b draws its token from the processed
distribution by inverting its CDF at one uniform from `fold_in(fold_in(key(seed), row_key[b]), step)`
(`sampling.draw`), so a record's sample does not depend on which
other prompts share its batch, the batch size or the mesh, up to float rounding of its logits
(row_key defaults to the prompt's position in the list; the CLI passes the record index, so
`--limit` or a different `--batch-size` keep each record's sample).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbc_jax import UserError
from mbc_jax.generate.sampling import SamplingConfig, Settings, draw, entropy, first_argmax, process_logits
from mbc_jax.models import init_cache, unstack_layers
from mbc_jax.sharding import batch_divisor, batch_sharding, constrain

DEFAULT_BUCKET = 16  # the smallest prompt bucket: prompts are padded to 16, 24, 32, 48, 64, 96, ... tokens


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


# ------------------------------------------------------------------------------ the decode program


_unstack = jax.jit(unstack_layers)  # once per `generate` call: the decode programs read the layers as a tuple


@functools.partial(jax.jit, static_argnames=("module", "max_new"))
def _prefill(module, max_new: int, params, ids, seg, live, row_keys, seed) -> dict:
    """ids/seg [B, T] left-padded prompts; live [B] (False: a filler row) -> the decode state: the KV cache
    after the prompts, the first token's logits, the tokens seen so far (for the penalty), each row's random
    key and empty output buffers [B, max_new]."""
    mesh = module.mesh
    b, t = ids.shape
    real = seg > 0
    positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0).astype(jnp.int32)
    cache = _pin_cache(init_cache(module.cfg, b, t + max_new), mesh)
    hidden, cache = module.apply({"params": params}, ids, positions, seg, cache=cache, return_hidden=True)
    logits = _last_logits(module, params, hidden)
    vocab = logits.shape[-1]
    present = jnp.zeros((b, vocab), bool).at[jnp.arange(b)[:, None], jnp.where(real, ids, vocab)].set(True, mode="drop")
    base = jax.random.key(seed)
    return _pin(dict(
        step=jnp.zeros((), jnp.int32), logits=logits, cache=cache, present=present,
        keys=jax.vmap(lambda r: jax.random.fold_in(base, r))(row_keys), lengths=real.sum(axis=1).astype(jnp.int32),
        finished=~live, eos=jnp.zeros((b,), bool), count=jnp.zeros((b,), jnp.int32),
        tokens=jnp.zeros((b, max_new), jnp.int32), ent=jnp.zeros((b, max_new), jnp.float32),
        sent=jnp.zeros((b, max_new), jnp.float32),
    ), mesh)


def _pin_cache(cache: dict, mesh) -> dict:
    """The KV cache's layout: rows over the batch axes, each layer's k/v heads over the tensor axis."""
    return {**cache, "k": tuple(constrain(c, mesh, ("batch", "act_heads", "length", None)) for c in cache["k"]),
            "v": tuple(constrain(c, mesh, ("batch", "act_heads", "length", None)) for c in cache["v"]),
            "pos": constrain(cache["pos"], mesh, ("batch", "length")),
            "seg": constrain(cache["seg"], mesh, ("batch", "length"))}


def _pin(state: dict, mesh) -> dict:
    """The decode state laid out one way whoever made it (prefill, a chunk of steps, a row compaction): the
    cache as `_pin_cache`, every other array's rows over the batch axes, scalars replicated. Otherwise each
    producer's own choice would compile the step program again."""
    def lay(a):
        return constrain(a, mesh, ("batch",) + (None,) * (a.ndim - 1) if a.ndim else ())
    rest = jax.tree.map(lay, {k: v for k, v in state.items() if k != "cache"})
    cache = _pin_cache(state["cache"], mesh)
    return {**rest, "cache": {**cache, "index": lay(cache["index"])}}


def _last_logits(module, params, hidden):
    return module.apply({"params": params}, hidden[:, -1], method=type(module).logits).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("module",), donate_argnames=("state",))
def _steps(module, params, state: dict, stop, eos_ids, pad_id, settings: Settings) -> dict:
    """Decode until step `stop` or until every row has finished (a `while_loop`; the state's buffers are
    donated, so the cache is written in place across calls)."""
    b = state["finished"].shape[0]
    rows = jnp.arange(b)

    def cond(s):
        return (s["step"] < stop) & ~jnp.all(s["finished"])

    def body(s):
        step, raw, done = s["step"], s["logits"], s["finished"]
        x = process_logits(raw, s["present"], settings)

        def sample(x):  # one uniform per row, the processed distribution's CDF inverted at it
            u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, step), (), jnp.float32))(s["keys"])
            return draw(x, u), entropy(x)

        tok, sent = jax.lax.cond(settings.greedy, lambda x: (first_argmax(x), jnp.zeros((b,), jnp.float32)),
                                 sample, x)
        tok = jnp.where(done, pad_id, tok)
        active = ~done
        hit_eos = active & jnp.any(tok[:, None] == eos_ids[None, :], axis=-1) & ~settings.ignore_eos
        out = dict(
            s, step=step + 1, finished=done | hit_eos, eos=s["eos"] | hit_eos,
            count=s["count"] + active.astype(jnp.int32),
            tokens=s["tokens"].at[:, step].set(tok),
            ent=s["ent"].at[:, step].set(jnp.where(active, entropy(raw), 0.0)),
            sent=s["sent"].at[:, step].set(jnp.where(active, sent, 0.0)),
            present=s["present"].at[rows, tok].set(True),
        )
        # feed the token: next position of each row is its prompt length + step
        hidden, out["cache"] = module.apply(
            {"params": params}, tok[:, None], (s["lengths"] + step)[:, None], jnp.ones((b, 1), jnp.int32),
            cache=s["cache"], return_hidden=True)
        out["logits"] = _last_logits(module, params, hidden)
        return out

    return _pin(jax.lax.while_loop(cond, body, state), module.mesh)


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnames=("state",))
def _take_rows(state: dict, idx, mesh=None) -> dict:
    """The decode state of rows `idx` only (every array but the step counters is per row)."""
    return _pin(jax.tree.map(lambda a: a if a.ndim == 0 else a[idx], state), mesh)




# ------------------------------------------------------------------------------ host side


def bucket_length(n: int, bucket: int = DEFAULT_BUCKET) -> int:
    """The padded length of a batch whose longest prompt has n tokens: the first of bucket x 1, 1.5, 2, 3,
    4, 6, 8, ... (powers of two and 1.5x powers of two) that holds n. At most a third of a prefill is
    padding, and a prompt list whose lengths reach L compiles about 2 log2(L / bucket) programs.
    (A Dolly prompt of 45 tokens runs as 48: with multiples of 32 it ran as 64, 1.33x the prefill.)"""
    for j in range(64):
        for size in (bucket << j, -(-3 * (bucket << j) // 2)):
            if size >= n:
                return size
    raise ValueError(f"no bucket holds {n} tokens")


def batch_rows(n_prompts: int, batch_size: int, mesh: Any) -> int:
    """Rows of each decoding batch: min(batch_size, n_prompts) rounded up to a multiple of data x fsdp."""
    div = batch_divisor(mesh)
    return -(-min(batch_size, max(n_prompts, 1)) // div) * div


CHUNK_STEPS = 16  # decode steps between looks at which rows have finished
SHRINK_MIN_STEPS = 16  # rows are compacted only when at least this many steps may remain


def shrunk_rows(live: int, rows: int, divisor: int) -> int:
    """Rows to continue with when `live` of `rows` are still decoding: the next power of two holding them
    (a multiple of the mesh's divisor), if that halves the batch at least; else `rows`. Each row count
    compiles the step program once per prompt bucket, so there are at most log2(batch) of them."""
    size = divisor
    while size < live:
        size *= 2
    return size if size * 2 <= rows else rows


def _run_rows(module, params, state: dict, max_new: int, members: int, divisor: int, eos_ids, pad_id,
              settings) -> list[tuple]:
    """Decode a prefilled batch to the end, CHUNK_STEPS at a time. Rows that finish early stop costing
    work: when the live rows fit in half the batch or less (`shrunk_rows`), the finished rows' outputs are
    read out and the rest continue in a smaller batch. Each row's computation is unchanged by who shares
    its batch (its random stream is its own). Returns (tokens, entropy, sampling entropy, count, eos)
    per batch row, in the batch's order; only the first `members` rows are real prompts."""
    out: list[tuple | None] = [None] * members
    where = np.arange(state["finished"].shape[0])  # state row -> batch row
    step = 0

    def read(state, rows_idx):
        got = jax.device_get({k: state[k] for k in ("tokens", "ent", "sent", "count", "eos")})
        for r in rows_idx:
            if where[r] < members and out[where[r]] is None:
                out[where[r]] = (got["tokens"][r], got["ent"][r], got["sent"][r], int(got["count"][r]),
                                 bool(got["eos"][r]))

    while True:
        step = min(step + CHUNK_STEPS, max_new)
        state = _steps(module, params, state, np.int32(step), eos_ids, pad_id, settings)
        finished = np.asarray(jax.device_get(state["finished"]))
        if finished.all() or step >= max_new:
            read(state, range(len(where)))
            return out  # type: ignore[return-value]
        rows = shrunk_rows(int((~finished).sum()), len(where), divisor)
        if rows < len(where) and max_new - step >= SHRINK_MIN_STEPS:
            read(state, np.flatnonzero(finished))
            keep = np.concatenate([np.flatnonzero(~finished), np.flatnonzero(finished)])[:rows]
            state = _take_rows(state, jnp.asarray(keep, jnp.int32), mesh=module.mesh)
            where = where[keep]


MAX_EOS_IDS = 8  # EOS ids are passed as a fixed-size vector, so their number never recompiles
_PAPER_SAMPLING = SamplingConfig()  # the default of `generate` (frozen: one shared instance is safe)


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


def _check_prompts(prompts: list[np.ndarray], config: SamplingConfig, cfg: Any) -> None:
    """A UserError naming the first prompt that is empty, has an id outside the vocabulary, or leaves
    no room for `config.max_new_tokens` in the model's positions."""
    for i, p in enumerate(prompts):
        if p.size == 0:
            raise UserError(f"prompt {i} is empty: generation needs at least one prompt token")
        if p.min() < 0 or p.max() >= cfg.vocab_size:
            raise UserError(f"prompt {i} has a token id outside the model's vocabulary [0, {cfg.vocab_size})")
        if p.size > config.prompt_room(cfg.max_position_embeddings):
            raise UserError(
                f"prompt {i} has {p.size} tokens; with {config.max_new_tokens} new tokens that exceeds the "
                f"model's {cfg.max_position_embeddings} positions: shorten the prompts or generate fewer tokens")


def _left_padded(prompts: list[np.ndarray], row_keys: list[int], rows: int, t: int, pad: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One batch's [rows, t] ids and segment ids, live rows and row keys: each prompt left-padded to t
    with `pad` (segment 0, never attended to; an id inside the vocabulary, as an id past it would embed
    as NaN), the rows after the prompts idle."""
    ids = np.full((rows, t), pad, np.int32)
    seg = np.zeros((rows, t), np.int32)
    live = np.zeros((rows,), bool)
    keys = np.zeros((rows,), np.uint32)
    for r, (p, key) in enumerate(zip(prompts, row_keys)):
        ids[r, t - p.size:] = p
        seg[r, t - p.size:] = 1
        live[r] = True
        keys[r] = key & 0xFFFFFFFF
    seg[len(prompts):, -1] = 1  # idle rows: one token so attention has something to look at
    return ids, seg, live, keys


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig = _PAPER_SAMPLING,
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
    _check_prompts(prompts, config, cfg)
    if batch_size < 1 or bucket < 1:
        raise UserError(f"batch size and bucket must be >= 1, got {batch_size} and {bucket}")

    rows = batch_rows(len(prompts), batch_size, model.mesh)
    order = sorted(range(len(prompts)), key=lambda i: (-prompts[i].size, i))
    scalars = dict(eos_ids=_eos_array(eos_token_id), pad_id=np.int32(pad), settings=Settings.of(config))
    scalars_seed = np.uint32(seed & 0xFFFFFFFF)
    div = batch_divisor(model.mesh)
    params = _unstack(model.params)  # the layers sliced and laid out for decoding once per call
    shard2, shard1 = batch_sharding(model.mesh, 2), batch_sharding(model.mesh, 1)
    results: list[Generation | None] = [None] * len(prompts)
    done = tokens_out = 0
    for start in range(0, len(order), rows):
        members = order[start:start + rows]
        ids, seg, live, keys = _left_padded([prompts[i] for i in members], [row_keys[i] for i in members], rows,
                                             bucket_length(max(prompts[i].size for i in members), bucket),
                                             pad if 0 <= pad < cfg.vocab_size else 0)
        put = lambda a: jax.device_put(a, shard2 if a.ndim == 2 else shard1)  # noqa: E731
        state = _prefill(model.module, config.max_new_tokens, params, put(ids), put(seg), put(live), put(keys),
                         scalars_seed)
        out = _run_rows(model.module, params, state, config.max_new_tokens, len(members), div, **scalars)
        for r, i in enumerate(members):
            toks, ent, sent, k, eos = out[r]
            results[i] = Generation(toks[:k].copy(), ent[:k].copy(), sent[:k].copy(), "eos" if eos else "length")
            tokens_out += k
        done += len(members)
        if on_batch is not None:
            on_batch(done, tokens_out)
    return results  # type: ignore[return-value]
