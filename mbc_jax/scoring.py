"""Per-record memorization metrics: the measurement at the heart of the method.

For every record: token counts, mean NLL and perplexity, exact memorization (the fraction of
targets where the argmax of the next-token prediction equals the ground truth; Tirumala et al.
2022), and mean teacher-forcing entropy, over the full dialogue and over the response only; and the
response exact match once more without the EOS target the template appends after each response (a
short answer's score is otherwise dominated by that one, easy, target).

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


def token_stats(hidden: jax.Array, unembed: jax.Array, nxt: jax.Array, token_chunk: int = 512,
                vocab_chunk: int = 2048) -> dict[str, jax.Array]:
    """Per-position NLL, argmax match and entropy [B, T] from final hidden states [B, T, E].

    `unembed` is the LM head as rows, [V, E] (the tied embedding matrix as stored): blocks of rows
    are contiguous slices, so nothing of the 50k x E matrix is transposed or copied per call.

    Never forms the [B, T, V] logits: tokens go `token_chunk` at a time, and within a chunk the
    vocabulary goes in equal blocks of about `vocab_chunk` rows (plus a short tail block), keeping
    running statistics (max, argmax, sum of exp, sum of exp * logit) as in an online softmax. A
    block of 512 x 2048 float32 logits (4 MiB) stays in cache between the matmul that writes it and
    the two passes that read it (argmax with its max; the exp sums). The target's logit is a dot
    product with its own row, not a search through the block.
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
            top, z, zl, arg = carry
            logits = jnp.einsum("te,ve->tv", hc, wc, preferred_element_type=jnp.float32)
            a = jnp.argmax(logits, -1).astype(jnp.int32)
            block_top = jnp.take_along_axis(logits, a[:, None], -1)[:, 0]
            new_top = jnp.maximum(top, block_top)
            ex = jnp.exp(logits - new_top[:, None])
            decay = jnp.exp(top - new_top)
            z = z * decay + ex.sum(-1)
            zl = zl * decay + (ex * logits).sum(-1)
            arg = jnp.where(block_top > top, off + a, arg)  # ties keep the earlier (lower) index
            return new_top, z, zl, arg

        zeros = jnp.zeros((tc,), jnp.float32)
        carry = (jnp.full((tc,), -jnp.inf), zeros, zeros, jnp.zeros((tc,), jnp.int32))
        carry, _ = jax.lax.scan(lambda c, ws: (block(c, *ws), None), carry, (blocks, offsets))
        if tail.shape[0]:
            carry = block(carry, tail, jnp.int32(n_blocks * vc))
        top, z, zl, arg = carry
        target = jnp.einsum("te,te->t", hc, jnp.take(w, yc, axis=0), preferred_element_type=jnp.float32)
        lse = top + jnp.log(z)
        return None, (lse - target, (arg == yc).astype(jnp.float32), lse - zl / z)

    _, (nll, match, ent) = jax.lax.scan(tokens, None, (h, y))
    return {"nll": unchunk(nll, b, t), "match": unchunk(match, b, t), "entropy": unchunk(ent, b, t)}


def score_batch(module: Any, params: Any, batch: dict[str, jax.Array], chunk: int = 512,
                eos_id: int | None = None) -> dict[str, jax.Array]:
    """Per-(row, segment) sums for one packed batch: {name: [B, S]} for every name in SUMS.

    `response_no_eos_*` count the response targets whose token is not `eos_id` (the id the template
    appends after each response, `Template.eos_id`); with None no target is left out, so they equal
    the `response_*` sums. A constant of the program (the compiled shapes do not depend on it).
    """
    hidden = module.apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"],
                          return_hidden=True)
    unembed = module.apply({"params": params}, method=module.unembedding)
    nxt, full, resp = targets(batch)
    stats = token_stats(hidden, unembed, nxt, chunk)
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
    return out


def _prefix(response: bool, no_eos: bool) -> str:
    if no_eos and not response:
        raise ValueError("no_eos applies to response targets only (pass response=True)")
    return "response_no_eos_" if no_eos else "response_" if response else ""


@dataclasses.dataclass
class Scores:
    """Per-example sums (arrays indexed like the examples list) and the metrics derived from them."""

    sums: dict[str, np.ndarray]

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

    def rows(self, examples: Sequence[Example]) -> Iterator[dict]:
        """One JSON-ready dict per example, in the order given (None where a record has no such targets)."""
        cols = {
            "perplexity": self.perplexity(), "response_perplexity": self.perplexity(True),
            "exact_match": self.exact_match(), "response_exact_match": self.exact_match(True),
            "response_exact_match_no_eos": self.exact_match(True, no_eos=True),
            "entropy": self.entropy(), "response_entropy": self.entropy(True),
            "mean_nll": self.mean("nll"), "response_mean_nll": self.mean("nll", True),
        }
        for i, ex in enumerate(examples):
            row = {"index": ex.index, "id": ex.id, "category": ex.category,
                   "tokens": int(self.sums["tokens"][i]), "response_tokens": int(self.sums["response_tokens"][i]),
                   "response_tokens_no_eos": int(self.sums["response_no_eos_tokens"][i])}
            for k, v in cols.items():
                row[k] = None if math.isnan(v[i]) else float(v[i])
            yield row


class Scorer:
    """Scores example sets with a model over its mesh; compiles once per batch shape.

        scorer = Scorer(model.module, model.mesh, eos_id=template.eos_id(model.tokenizer))
        scores = scorer(params, examples)            # -> Scores

    `eos_id`: the token the template appends after each response, left out of the no-EOS response
    exact match (`score_batch`); None: none is left out.
    """

    def __init__(self, module: Any, mesh: Any, seq_len: int = 512, tokens_per_batch: int = 2048,
                 chunk: int = 512, max_segments: int | None = None, eos_id: int | None = None):
        self.module, self.mesh, self.seq_len, self.chunk, self.eos_id = module, mesh, seq_len, chunk, eos_id
        divisor = batch_divisor(mesh)
        self.rows = max(divisor, (tokens_per_batch // seq_len) // divisor * divisor)
        self.max_segments = max_segments
        self._fn = jax.jit(lambda p, b: score_batch(module, p, b, chunk, eos_id))
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
        sums = {k: np.zeros(len(examples), np.float64) for k in SUMS}
        sharding = batch_sharding(self.mesh)
        pending: list[tuple[Batch, dict]] = []

        def collect(item):
            batch, out = item
            out = distributed.gather(out)  # every host gets all rows' sums, in the batch's row order
            idx = batch.record_index
            real = idx >= 0
            for k in SUMS:
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
        return Scores(sums)
