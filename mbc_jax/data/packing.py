"""Fixed-shape batches: examples packed several to a row with segment ids, and row counts in few sizes.

    batches = pack(examples, seq_len, rows)  # best-fit decreasing; every batch [rows, seq_len]

Padding has segment id 0 and input id 0; positions restart at 0 in each record, so attention and
positions never cross records and a packed record scores as it would alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mbc_jax import UserError
from mbc_jax.data.template import Example


@dataclass
class Batch:
    """Fixed-shape numpy arrays; padding has segment_ids 0 (its input_ids are 0)."""

    input_ids: np.ndarray  # int32 [B, T]
    segment_ids: np.ndarray  # int32 [B, T]: 0 padding, s >= 1 the s-th record of the row
    positions: np.ndarray  # int32 [B, T]: position inside its own record, 0 on padding
    response_mask: np.ndarray  # bool [B, T]
    record_index: np.ndarray  # int32 [B, S]: index into the examples list of segment s+1, -1 if none


def check_lengths(examples: Sequence[Example], seq_len: int) -> None:
    """Raise a UserError naming the first example that is empty or longer than a row of `seq_len`."""
    for i, ex in enumerate(examples):
        if len(ex) > seq_len:
            raise UserError(f"example {i} (id {ex.id}, {ex.source or 'index ' + str(ex.index)}) has {len(ex)} tokens, "
                            f"more than the row length {seq_len}: tokenize with max_length <= {seq_len}")
        if len(ex) == 0:
            raise UserError(f"example {i} (id {ex.id}) has no tokens")


def build_batches(rows: list[list[int]], examples: Sequence[Example], seq_len: int, rows_per_batch: int,
                  n_segments: int) -> list[Batch]:
    """Batches of `rows_per_batch` rows of `seq_len` tokens; `rows[r]` lists the example indices of row r, in order.

    The last batch is filled up with empty rows; record_index has `n_segments` columns.
    """
    batches = []
    for start in range(0, len(rows), rows_per_batch):
        shape = (rows_per_batch, seq_len)
        ids = np.zeros(shape, np.int32)
        seg = np.zeros(shape, np.int32)
        pos = np.zeros(shape, np.int32)
        resp = np.zeros(shape, bool)
        rec = np.full((rows_per_batch, n_segments), -1, np.int32)
        for b, row in enumerate(rows[start:start + rows_per_batch]):
            t = 0
            for s, i in enumerate(row):
                ex = examples[i]
                n = len(ex)
                ids[b, t:t + n] = ex.input_ids
                seg[b, t:t + n] = s + 1
                pos[b, t:t + n] = np.arange(n)
                resp[b, t:t + n] = ex.response_mask
                rec[b, s] = i
                t += n
        batches.append(Batch(ids, seg, pos, resp, rec))
    return batches


def pack(
    examples: Sequence[Example], seq_len: int, rows_per_batch: int, max_segments: int | None = None
) -> list[Batch]:
    """Pack several examples per row (best-fit decreasing), rows grouped into equal-shape batches.

    Every batch is [rows_per_batch, seq_len] with S = max_segments (or the most segments any row
    got) columns of record_index; the last batch is filled up with empty rows. Each example
    appears exactly once, its tokens contiguous and in order, positions restarting at 0.
    """
    if seq_len < 1 or rows_per_batch < 1 or (max_segments is not None and max_segments < 1):
        raise UserError("pack: seq_len, rows_per_batch and max_segments must be >= 1")
    check_lengths(examples, seq_len)
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[list[int]] = []
    free: list[int] = []  # free tokens per row
    by_free: dict[int, list[int]] = {}  # free capacity -> open rows (LIFO)
    caps: list[int] = []  # sorted capacities that have open rows
    for i in order:
        n = len(examples[i])
        j = bisect.bisect_left(caps, n)
        if j < len(caps):  # best fit: the open row with the least room that still fits
            c = caps[j]
            r = by_free[c].pop()
            if not by_free[c]:
                del by_free[c]
                caps.pop(j)
        else:
            r = len(rows)
            rows.append([])
            free.append(seq_len)
        rows[r].append(i)
        free[r] -= n
        c = free[r]
        if c > 0 and (max_segments is None or len(rows[r]) < max_segments):
            if c not in by_free:
                bisect.insort(caps, c)
                by_free[c] = []
            by_free[c].append(r)
    n_segments = max_segments or max((len(r) for r in rows), default=1)
    return build_batches(rows, examples, seq_len, rows_per_batch, n_segments)


def row_bucket(used: int, most: int, divisor: int = 1) -> int:
    """Rows of a packed train batch that needs `used` rows (of at most `most`): the next size in
    1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5x powers of two), rounded up to a multiple
    of the mesh's batch divisor. Each size compiles the train step once, so sizes stay few (about
    2 log2(batch)), while at most a third of a batch's rows are padding: 5 rows run as 6, not 8."""
    power = 1 << max(0, (used - 1).bit_length())  # the next power of two
    size = power * 3 // 4 if power >= 4 and used <= power * 3 // 4 else power
    size = -(-max(size, divisor) // divisor) * divisor
    return min(size, -(-most // divisor) * divisor)


def pack_drawn(examples: Sequence[Example], idx: np.ndarray, seq_len: int, segments: int, divisor: int = 1) -> Batch:
    """One train batch: the drawn records `idx` (indices into `examples`, repeats allowed) packed
    into rows of `seq_len`, the row count bucketed by `row_bucket` (a multiple of `divisor`).
    `record_index` [rows, segments] names records by their index into `examples`."""
    drawn = [examples[i] for i in idx]
    (batch,) = pack(drawn, seq_len, rows_per_batch=len(drawn))
    used = int((batch.segment_ids != 0).any(1).sum())
    rows = row_bucket(used, len(drawn), divisor)
    ri = np.full((rows, segments), -1, np.int32)
    ri[: min(rows, len(batch.record_index)), : batch.record_index.shape[1]] = batch.record_index[:rows]
    ri = np.where(ri >= 0, np.asarray(idx)[np.maximum(ri, 0)], -1)  # -> indices into `examples`
    fix = lambda a: np.pad(a[:rows], ((0, max(0, rows - len(a))), (0, 0)))  # noqa: E731
    return Batch(fix(batch.input_ids), fix(batch.segment_ids), fix(batch.positions), fix(batch.response_mask), ri)
