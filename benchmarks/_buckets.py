"""Length-bucketed and padded batches: the alternatives to packing that `score_throughput.py --mode` compares.

One example per row in both; only the benchmark (and its tests) use them, so they live here and not
in `mbc_jax.data`, whose `pack` is what training and scoring use.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from mbc_jax import UserError
from mbc_jax.data import Batch, Example, build_batches, check_lengths


def default_bucket_lengths(max_length: int, smallest: int = 64) -> tuple[int, ...]:
    """Powers of two from `smallest` up to (and ending exactly at) max_length, e.g. (64, 128, 256, 512)."""
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        b *= 2
    return tuple(out) + (max_length,)


def bucket(examples: Sequence[Example], bucket_lengths: Sequence[int], tokens_per_batch: int) -> list[Batch]:
    """One example per row, each in the shortest bucket it fits; batches of tokens_per_batch // length rows.

    Batches come bucket by bucket (shortest first), examples in input order within a bucket; each
    bucket's batches share one shape [tokens_per_batch // L, L] (the last one filled with empty rows).
    """
    lengths = sorted(set(int(x) for x in bucket_lengths))
    if not lengths or lengths[0] < 1:
        raise UserError(f"bucket lengths must be positive, got {tuple(bucket_lengths)}")
    check_lengths(examples, lengths[-1])
    members: dict[int, list[list[int]]] = {L: [] for L in lengths}
    for i, ex in enumerate(examples):
        members[lengths[bisect.bisect_left(lengths, len(ex))]].append([i])
    out = []
    for L in lengths:
        if members[L]:
            out += build_batches(members[L], examples, L, max(1, tokens_per_batch // L), 1)
    return out


def pad_rows(examples: Sequence[Example], seq_len: int) -> Batch:
    """One example per row, right-padded to seq_len: a single [len(examples), seq_len] batch."""
    check_lengths(examples, seq_len)
    if not examples:
        raise UserError("pad_rows: no examples")
    return build_batches([[i] for i in range(len(examples))], examples, seq_len, len(examples), 1)[0]
