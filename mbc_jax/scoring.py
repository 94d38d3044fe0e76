"""Per-record memorization metrics: the measurement at the heart of the method.

For every record: token counts, mean NLL and perplexity, exact memorization (the fraction of
targets where the argmax of the next-token prediction equals the ground truth; Tirumala et al.
2022), and mean teacher-forcing entropy, over the full dialogue and over the response only; and the
response exact match once more without the EOS target the template appends after each response (a
short answer's score is otherwise dominated by that one, easy, target).

Membership signals (on by default, `membership=False` drops them), over the same full and response
targets: Min-K% Prob (Shi et al. 2024), the mean of the lowest k% target log-probs; Min-K%++ (Zhang
et al. 2024), the mean of the lowest k% per-token scores (log p(x_t) - mu_t) / sigma_t with mu_t and
sigma_t the mean and standard deviation of log p over the vocabulary under p; and the zlib ratio
(Carlini et al. 2021), the mean NLL over the zlib-compressed length of the record's text, on the host.

`score_batch` is one jitted function over the mesh (rows sharded over data and fsdp). It never
holds float32 [rows, length, vocab] logits: the LM head and its reductions run per chunk of
positions inside a `lax.scan`, and only per-(row, segment) sums leave the device. Records are
packed several per row (see `mbc_jax.data.pack`), so there is one compiled shape per run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mbc_jax import distributed
from mbc_jax.data import Batch, Example, pack
from mbc_jax.loss import position_chunks, segment_sums, targets, unchunk
from mbc_jax.sharding import batch_divisor, batch_sharding

SUMS = ("tokens", "nll", "match", "entropy", "response_tokens", "response_nll", "response_match", "response_entropy",
        "response_no_eos_tokens", "response_no_eos_match")
# With membership signals on: sums of the lowest k% token log-probs (Min-K%) and Min-K%++ scores, and how many
# targets the lowest k% holds (ceil(k * targets), the same for both), over full and response targets.
MEMBERSHIP_SUMS = ("min_k", "min_k_pp", "min_k_tokens", "response_min_k", "response_min_k_pp",
                   "response_min_k_tokens")
MIN_K = 0.2  # Shi et al. 2024's and Zhang et al. 2024's recommended k
SIGMA_FLOOR = 1e-6  # Min-K%++'s sigma_t is at least this (a one-hot p has sigma 0)


def token_stats(hidden: jax.Array, unembed: jax.Array, nxt: jax.Array, token_chunk: int = 512,
                vocab_chunk: int = 2048, moments: bool = False) -> dict[str, jax.Array]:
    """Per-position NLL, argmax match and entropy [B, T] from final hidden states [B, T, E]; with
    `moments`, also Min-K%++'s per-token score `min_k_pp` = (log p(x) - mu) / max(sigma, SIGMA_FLOOR).

    `unembed` is the LM head as rows, [V, E] (the tied embedding matrix as stored): blocks of rows
    are contiguous slices, so nothing of the 50k x E matrix is transposed or copied per call.

    Never forms the [B, T, V] logits: tokens go `token_chunk` at a time, and within a chunk the
    vocabulary goes in equal blocks of about `vocab_chunk` rows (plus a short tail block), keeping
    running statistics (max, argmax, sum of exp, sum of exp * (logit - max)) as in an online softmax. A
    block of 512 x 2048 float32 logits (4 MiB) stays in cache between the matmul that writes it and
    the two passes that read it (argmax with its max; the exp sums). The target's logit is a dot
    product with its own row, not a search through the block.

    The entropy is lse - E_p[logit] = log z - m1 / z with m1 the running sum of ex * (logit - max),
    moved to the new max when it rises. Min-K%++'s mu and sigma of log p under p need one more, ex *
    (logit - max)^2, moved the same way (shifted by the max, so no large logit is squared).
    """
    b, t, e = hidden.shape
    v = unembed.shape[0]
    n_blocks = max(1, v // vocab_chunk)
    vc = v // n_blocks  # n_blocks blocks of vc rows, then a tail of v - n_blocks * vc < n_blocks
    h, y = position_chunks(token_chunk, hidden, nxt)
    tc, dtype = h.shape[1], hidden.dtype
    w = unembed.astype(dtype)
    blocks = w[:n_blocks * vc].reshape(n_blocks, vc, e)
    offsets = jnp.arange(n_blocks, dtype=jnp.int32) * vc
    tail = w[n_blocks * vc:]

    def tokens(_, xs):
        hc, yc = xs

        def block(carry, wc, off):
            top, z, arg, m1, m2 = carry
            logits = jnp.einsum("te,ve->tv", hc, wc, preferred_element_type=jnp.float32)
            a = jnp.argmax(logits, -1).astype(jnp.int32)
            block_top = jnp.take_along_axis(logits, a[:, None], -1)[:, 0]
            new_top = jnp.maximum(top, block_top)
            shifted = logits - new_top[:, None]
            ex = jnp.exp(shifted)
            decay = jnp.exp(top - new_top)
            # sums of ex * (logit - top) (and ex * (logit - top)^2), moved to the new top
            d = jnp.where(jnp.isfinite(top), top - new_top, 0.0)
            if moments:
                m2 = decay * (m2 + 2 * d * m1 + d * d * z) + (ex * shifted * shifted).sum(-1)
            m1 = decay * (m1 + d * z) + (ex * shifted).sum(-1)
            z = z * decay + ex.sum(-1)
            arg = jnp.where(block_top > top, off + a, arg)  # ties keep the earlier (lower) index
            return new_top, z, arg, m1, m2

        zeros = jnp.zeros((tc,), jnp.float32)
        carry = (jnp.full((tc,), -jnp.inf), zeros, jnp.zeros((tc,), jnp.int32), zeros, zeros)
        carry, _ = jax.lax.scan(lambda c, ws: (block(c, *ws), None), carry, (blocks, offsets))
        if tail.shape[0]:
            carry = block(carry, tail, jnp.int32(n_blocks * vc))
        top, z, arg, m1, m2 = carry
        target = jnp.einsum("te,te->t", hc, jnp.take(w, yc, axis=0), preferred_element_type=jnp.float32)
        lse = top + jnp.log(z)
        mean = m1 / z  # E_p[logit] - top
        out = (lse - target, (arg == yc).astype(jnp.float32), jnp.log(z) - mean)  # entropy = lse - E_p[logit]
        if moments:  # log p(x) - mu = (target - top) - m1 / z; sigma^2 = m2 / z - (m1 / z)^2
            sigma = jnp.sqrt(jnp.maximum(m2 / z - mean * mean, 0.0))
            out += ((target - top - mean) / jnp.maximum(sigma, SIGMA_FLOOR),)
        return None, out

    _, outs = jax.lax.scan(tokens, None, (h, y))
    names = ("nll", "match", "entropy", "min_k_pp")
    return {k: unchunk(v, b, t) for k, v in zip(names, outs)}


def lowest_k_sums(values: jax.Array, mask: jax.Array, seg: jax.Array, num_segments: int, k: float
                  ) -> tuple[jax.Array, jax.Array]:
    """([B, S] sum of each segment's lowest ceil(k * n) `values` among its n positions where `mask`
    holds, [B, S] how many that is): Min-K%'s "lowest k% of a record's tokens", per packed record.

    Each row is sorted by (segment, value), positions outside `mask` last; a position's rank in its
    segment is its sorted index minus where the segment starts (the counts of the segments before
    it). ceil(k * n) is formed in integers from k in units of 1/10000, so the host and any oracle
    get the same count."""
    kb = round(k * 10000)
    if not 0 < kb <= 10000:
        raise ValueError(f"k = {k}: expected a fraction in (0, 1] (in steps of 0.0001)")
    b, t = values.shape
    key = jnp.where(mask, seg, num_segments + 1).astype(jnp.int32)
    key_s, val_s = jax.lax.sort((key, jnp.where(mask, values, 0.0).astype(jnp.float32)), dimension=1, num_keys=2)
    counts = segment_sums(jnp.ones_like(values), mask, seg, num_segments).astype(jnp.int32)  # [B, S]
    starts = jnp.cumsum(counts, axis=1) - counts
    keep = (counts * kb + 9999) // 10000  # ceil(k * n)
    slot = jnp.clip(key_s - 1, 0, num_segments - 1)
    rank = jnp.arange(t, dtype=jnp.int32)[None, :] - jnp.take_along_axis(starts, slot, 1)
    chosen = (key_s <= num_segments) & (rank < jnp.take_along_axis(keep, slot, 1))
    return segment_sums(val_s, chosen, key_s, num_segments), keep.astype(jnp.float32)


def score_batch(module: Any, params: Any, batch: dict[str, jax.Array], chunk: int = 512,
                eos_id: int | None = None, membership: bool = False, min_k: float = MIN_K) -> dict[str, jax.Array]:
    """Per-(row, segment) sums for one packed batch: {name: [B, S]} for every name in SUMS (and in
    MEMBERSHIP_SUMS with `membership`, the lowest `min_k` share of each record's targets).

    `response_no_eos_*` count the response targets whose token is not `eos_id` (the id the template
    appends after each response, `Template.eos_id`); with None no target is left out, so they equal
    the `response_*` sums. A constant of the program (the compiled shapes do not depend on it).
    """
    hidden = module.apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"],
                          return_hidden=True)
    unembed = module.apply({"params": params}, method=module.unembedding)
    nxt, full, resp = targets(batch)
    stats = token_stats(hidden, unembed, nxt, chunk, moments=membership)
    s = batch["record_index"].shape[1]
    seg = batch["segment_ids"]
    out = {"tokens": segment_sums(jnp.ones_like(nxt), full, seg, s),
           "response_tokens": segment_sums(jnp.ones_like(nxt), resp, seg, s)}
    for name in ("nll", "match", "entropy"):
        out[name] = segment_sums(stats[name], full, seg, s)
        out[f"response_{name}"] = segment_sums(stats[name], resp, seg, s)
    no_eos = resp & (nxt != (-1 if eos_id is None else eos_id))  # token ids are >= 0: -1 leaves none out
    out["response_no_eos_tokens"] = segment_sums(jnp.ones_like(nxt), no_eos, seg, s)
    out["response_no_eos_match"] = segment_sums(stats["match"], no_eos, seg, s)
    if membership:
        for prefix, mask in (("", full), ("response_", resp)):
            out[f"{prefix}min_k"], out[f"{prefix}min_k_tokens"] = lowest_k_sums(-stats["nll"], mask, seg, s, min_k)
            out[f"{prefix}min_k_pp"], _ = lowest_k_sums(stats["min_k_pp"], mask, seg, s, min_k)
    return out


def _prefix(response: bool, no_eos: bool) -> str:
    if no_eos and not response:
        raise ValueError("no_eos applies to response targets only (pass response=True)")
    return "response_no_eos_" if no_eos else "response_" if response else ""


@dataclasses.dataclass
class Scores:
    """Per-example sums (arrays indexed like the examples list) and the metrics derived from them."""

    sums: dict[str, np.ndarray]
    zlib_bytes: dict[str, np.ndarray] | None = None  # {"full", "response"}: zlib length of the text (`zlib_lengths`)

    def mean(self, name: str, response: bool = False, no_eos: bool = False) -> np.ndarray:
        """Per-record mean of `name` over the record's targets (nan where it has none); `no_eos`: the
        response targets other than the EOS one (name "match" only)."""
        prefix = _prefix(response, no_eos)
        n = self.sums[f"{prefix}tokens"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.sums[f"{prefix}{name}"] / np.maximum(n, 1), np.nan)

    def pooled(self, name: str, response: bool = False, no_eos: bool = False) -> float:
        """`name` summed over all records / their targets summed: one ratio in which long records weigh
        more (exact memorization as Eq. 1 of the paper; the corpus-level NLL and entropy)."""
        prefix = _prefix(response, no_eos)
        return float(self.sums[f"{prefix}{name}"].sum() / max(self.sums[f"{prefix}tokens"].sum(), 1))

    def perplexity(self, response: bool = False) -> np.ndarray:
        return np.exp(self.mean("nll", response))

    def exact_match(self, response: bool = False, no_eos: bool = False) -> np.ndarray:
        return self.mean("match", response, no_eos)

    def entropy(self, response: bool = False) -> np.ndarray:
        return self.mean("entropy", response)

    def min_k(self, response: bool = False, plus_plus: bool = False) -> np.ndarray:
        """Per-record Min-K% Prob (mean of the lowest k% target log-probs; Shi et al. 2024) or, with
        `plus_plus`, Min-K%++ (Zhang et al. 2024); nan where a record has no such targets or the
        scorer ran without membership signals. Higher reads as "more likely a training record"."""
        prefix = "response_" if response else ""
        if f"{prefix}min_k_tokens" not in self.sums:
            return np.full(len(self.sums["tokens"]), np.nan)
        n = self.sums[f"{prefix}min_k_tokens"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.sums[f"{prefix}min_k{'_pp' if plus_plus else ''}"] / np.maximum(n, 1), np.nan)

    def zlib_ratio(self, response: bool = False) -> np.ndarray:
        """Mean NLL / zlib-compressed length in bytes of the record's text (Carlini et al. 2021); nan
        without the lengths (a scorer with no tokenizer) or without such targets."""
        if self.zlib_bytes is None:
            return np.full(len(self.sums["tokens"]), np.nan)
        n = self.zlib_bytes["response" if response else "full"]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.mean("nll", response) / np.maximum(n, 1), np.nan)

    def rows(self, examples: Sequence[Example]) -> Iterator[dict]:
        """One JSON-ready dict per example, in the order given (None where a record has no such targets)."""
        cols = {
            "perplexity": self.perplexity(), "response_perplexity": self.perplexity(True),
            "exact_match": self.exact_match(), "response_exact_match": self.exact_match(True),
            "response_exact_match_no_eos": self.exact_match(True, no_eos=True),
            "entropy": self.entropy(), "response_entropy": self.entropy(True),
            "mean_nll": self.mean("nll"), "response_mean_nll": self.mean("nll", True),
            "min_k": self.min_k(), "response_min_k": self.min_k(True),
            "min_k_pp": self.min_k(plus_plus=True), "response_min_k_pp": self.min_k(True, plus_plus=True),
            "zlib_ratio": self.zlib_ratio(), "response_zlib_ratio": self.zlib_ratio(True),
        }
        for i, ex in enumerate(examples):
            row = {"index": ex.index, "id": ex.id, "category": ex.category,
                   "tokens": int(self.sums["tokens"][i]), "response_tokens": int(self.sums["response_tokens"][i]),
                   "response_tokens_no_eos": int(self.sums["response_no_eos_tokens"][i])}
            for k, v in cols.items():
                row[k] = None if math.isnan(v[i]) else float(v[i])
            yield row


def record_texts(example: Example, tokenizer: Any) -> tuple[str, str]:
    """(the record's text, its response's text) as the model scored them: the record's tokens decoded
    (template and special tokens included, after truncation) and its response tokens decoded."""
    ids = np.asarray(example.input_ids)
    return (tokenizer.decode(ids.tolist(), skip_special_tokens=False),
            tokenizer.decode(ids[example.response_mask].tolist(), skip_special_tokens=False))


def zlib_lengths(examples: Sequence[Example], tokenizer: Any, cache: dict | None = None) -> dict[str, np.ndarray]:
    """{"full", "response"}: len(zlib.compress(text.encode("utf-8"))) of each record's `record_texts`
    (0 for an empty response). The text is the decoded tokens, not the source record: the NLL in the
    ratio's numerator is over exactly these tokens, so both sides see the same template and truncation.
    `cache` maps a record's tokens to its lengths across calls (a trainer scores the same records often)."""
    import zlib

    full, resp = np.zeros(len(examples), np.int64), np.zeros(len(examples), np.int64)
    for i, ex in enumerate(examples):
        key = (np.asarray(ex.input_ids).tobytes(), np.asarray(ex.response_mask).tobytes())
        got = None if cache is None else cache.get(key)
        if got is None:
            text, response = record_texts(ex, tokenizer)
            got = (len(zlib.compress(text.encode("utf-8"))),
                   len(zlib.compress(response.encode("utf-8"))) if response else 0)
            if cache is not None:
                cache[key] = got
        full[i], resp[i] = got
    return {"full": full, "response": resp}


class Scorer:
    """Scores example sets with a model over its mesh; compiles once per batch shape.

        scorer = Scorer(model.module, model.mesh, eos_id=template.eos_id(model.tokenizer))
        scores = scorer(params, examples)            # -> Scores

    `eos_id`: the token the template appends after each response, left out of the no-EOS response
    exact match (`score_batch`); None: none is left out. `membership`: also the Min-K% and Min-K%++
    sums (`min_k`: their k); `tokenizer`: with it, the zlib lengths for the zlib ratio (`zlib_cache`: kept per
    record across calls, for a trainer that scores the same records often).
    """

    def __init__(self, module: Any, mesh: Any, seq_len: int = 512, tokens_per_batch: int = 2048,
                 chunk: int = 512, max_segments: int | None = None, eos_id: int | None = None,
                 membership: bool = True, min_k: float = MIN_K, tokenizer: Any = None, zlib_cache: bool = True):
        self.module, self.mesh, self.seq_len, self.chunk, self.eos_id = module, mesh, seq_len, chunk, eos_id
        divisor = batch_divisor(mesh)
        self.rows = max(divisor, (tokens_per_batch // seq_len) // divisor * divisor)
        self.max_segments = max_segments
        self.membership, self.min_k, self.tokenizer = membership, min_k, tokenizer
        self.sum_names = SUMS + (MEMBERSHIP_SUMS if membership else ())
        self._zlib_cache: dict | None = {} if zlib_cache else None  # off for a stream of records seen once
        self._fn = jax.jit(lambda p, b: score_batch(module, p, b, chunk, eos_id, membership, min_k))
        self.compile_seconds = 0.0
        self._compiled: dict = {}

    def batches(self, examples: Sequence[Example]) -> list[Batch]:
        return pack(examples, self.seq_len, self.rows, self.max_segments)

    def lower(self, params: Any, batch: dict[str, Any]) -> Any:
        """The scoring program lowered for `params` and one batch (arrays or `jax.ShapeDtypeStruct`s
        with shardings): `.compile()` it, e.g. to read its memory analysis (`mbc-jax plan`)."""
        return self._fn.lower(params, batch)

    def prefix_batches(self, examples: Sequence[Example], order: np.ndarray, count: int
                       ) -> tuple[np.ndarray, list[Batch]]:
        """(records, their packed batches): `order[:count]`, topped up with the records that follow in
        `order` for as long as they pack into no more batches than `order[:count]` alone needs.

        Those positions are computed either way: without the top-up a small subset leaves most of
        its last batch as padding. Returns the longest such prefix of `order`.
        """
        batches = self.batches([examples[i] for i in order[:count]])
        room = len(batches) * self.rows * self.seq_len - sum(len(examples[i]) for i in order[:count])
        hi = count
        while hi < len(order) and len(examples[order[hi]]) <= room:
            room -= len(examples[order[hi]])
            hi += 1
        best, lo = (order[:count], batches), count + 1  # binary search: the longest prefix that packs as tightly
        while lo <= hi:
            m = (lo + hi) // 2
            topped = self.batches([examples[i] for i in order[:m]])
            if len(topped) == len(batches):
                best, lo = (order[:m], topped), m + 1
            else:
                hi = m - 1
        return best

    def __call__(self, params: Any, examples: Sequence[Example], batches: list[Batch] | None = None,
                 progress: Any = None) -> Scores:
        batches = self.batches(examples) if batches is None else batches
        sums = {k: np.zeros(len(examples), np.float64) for k in self.sum_names}
        sharding = batch_sharding(self.mesh)
        pending: list[tuple[Batch, dict]] = []

        def collect(item):
            batch, out = item
            out = distributed.gather(out)  # every host gets all rows' sums, in the batch's row order
            idx = batch.record_index
            real = idx >= 0
            for k in self.sum_names:
                np.add.at(sums[k], idx[real], np.asarray(out[k])[real])
            if progress is not None:
                progress.update(int(real.sum()))

        for batch in batches:
            arrays = distributed.put_batch(batch, sharding)  # each host feeds only the rows it owns
            shape = (batch.input_ids.shape, batch.record_index.shape)
            if shape not in self._compiled:  # compile explicitly, once per shape, and time it
                t0 = time.perf_counter()
                self._compiled[shape] = self._fn.lower(params, arrays).compile()
                self.compile_seconds += time.perf_counter() - t0
            pending.append((batch, self._compiled[shape](params, arrays)))
            if len(pending) > 1:  # keep one batch in flight while the host collects the previous one
                collect(pending.pop(0))
        for item in pending:
            collect(item)
        zlib = None if self.tokenizer is None else zlib_lengths(examples, self.tokenizer, self._zlib_cache)
        return Scores(sums, zlib)
