"""mbc_jax/data/packing.py: packed batches keep every token in place with fixed shapes, the
benchmark's buckets and padded rows, the shared benchmark file packs tightly, and row buckets."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._buckets import bucket, default_bucket_lengths, pad_rows
from conftest import BENCH, TOKENIZER_DIR
from mbc_jax import UserError
from mbc_jax.data import Batch, Example, load_records, pack, tokenize

needs_shared = pytest.mark.skipif(not TOKENIZER_DIR.is_dir(), reason="../shared/tokenizers not present")


def _examples(lengths: list[int]) -> list[Example]:
    """Token ids encode (example, position) so every token can be traced back."""
    out = []
    for i, n in enumerate(lengths):
        ids = (1000 * (i + 1) + np.arange(n)).astype(np.int32)
        mask = np.arange(n) >= n // 3
        out.append(Example(index=i, id=str(i), category="", input_ids=ids, response_mask=mask))
    return out


def padding_stats(batches: list[Batch]) -> dict:
    """Real vs padded token counts over a list of batches (efficiency = real / padded)."""
    real = sum(int((b.segment_ids > 0).sum()) for b in batches)
    padded = sum(int(b.input_ids.size) for b in batches)
    return {"real_tokens": real, "efficiency": real / padded if padded else 0.0}


def _check_batches(batches: list[Batch], examples: list[Example], max_segments: int | None = None) -> dict[int, tuple]:
    """Every example exactly once, contiguous, in order, right positions/segments/masks; padding clean."""
    seen: dict[int, tuple] = {}
    for bi, b in enumerate(batches):
        B, T = b.input_ids.shape
        assert b.input_ids.dtype == b.segment_ids.dtype == b.positions.dtype == b.record_index.dtype == np.int32
        assert b.response_mask.dtype == bool and b.record_index.shape[0] == B
        for r in range(B):
            seg = b.segment_ids[r]
            pad = seg == 0
            assert not b.input_ids[r][pad].any() and not b.positions[r][pad].any() and not b.response_mask[r][pad].any()
            n_seg = int(seg.max())
            assert (b.record_index[r, :n_seg] >= 0).all() and (b.record_index[r, n_seg:] == -1).all()
            if max_segments:
                assert n_seg <= max_segments
            t = 0
            for s in range(1, n_seg + 1):
                idx = np.flatnonzero(seg == s)
                assert idx[0] == t and np.array_equal(idx, np.arange(t, t + len(idx)))  # contiguous, packed left
                i = int(b.record_index[r, s - 1])
                ex = examples[i]
                assert i not in seen
                seen[i] = (bi, r, s)
                np.testing.assert_array_equal(b.input_ids[r, idx], ex.input_ids)
                np.testing.assert_array_equal(b.positions[r, idx], np.arange(len(ex)))
                np.testing.assert_array_equal(b.response_mask[r, idx], ex.response_mask)
                t += len(idx)
            assert pad[t:].all()  # no row overflows; padding only at the end
    assert sorted(seen) == list(range(len(examples)))
    return seen


def test_pack_invariants_and_fixed_shapes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, size=300).tolist() + [64, 64, 1]
    examples = _examples(lengths)
    batches = pack(examples, seq_len=64, rows_per_batch=8)
    assert {b.input_ids.shape for b in batches} == {(8, 64)}
    assert len({b.record_index.shape for b in batches}) == 1
    _check_batches(batches, examples)
    rows = sum(int((b.segment_ids.max(axis=1) > 0).sum()) for b in batches)
    lower = max(int(np.ceil(sum(lengths) / 64)), sum(n > 32 for n in lengths))  # no two items > 32 share a row
    assert lower <= rows <= 1.05 * lower
    stats = padding_stats(batches)
    assert stats["real_tokens"] == sum(lengths) and stats["efficiency"] > 0.9

    capped = pack(examples, seq_len=64, rows_per_batch=8, max_segments=2)
    assert {b.record_index.shape for b in capped} == {(8, 2)}
    _check_batches(capped, examples, max_segments=2)


def test_pack_exact_fit_and_errors():
    examples = _examples([3, 5, 2, 6, 4, 4])  # 24 tokens -> exactly 3 rows of 8
    batches = pack(examples, seq_len=8, rows_per_batch=2)
    assert len(batches) == 2 and (batches[0].segment_ids > 0).all() and (batches[1].segment_ids[0] > 0).all()
    assert (batches[1].segment_ids[1] == 0).all() and (batches[1].record_index[1] == -1).all()  # filler row
    _check_batches(batches, examples)
    assert pack([], 8, 2) == []
    with pytest.raises(UserError, match=r"example 1 \(id 1, index 1\) has 9 tokens, more than the row length 8"):
        pack(_examples([3, 9]), seq_len=8, rows_per_batch=2)


def test_bucket_and_pad_rows():
    lengths = [5, 64, 65, 200, 256, 1, 100, 33, 128, 129]
    examples = _examples(lengths)
    batches = bucket(examples, default_bucket_lengths(256, smallest=64), tokens_per_batch=512)
    assert default_bucket_lengths(256, smallest=64) == (64, 128, 256)
    seen = _check_batches(batches, examples)
    shape_of = {i: batches[bi].input_ids.shape for i, (bi, _, _) in seen.items()}
    expected = {64: (8, 64), 128: (4, 128), 256: (2, 256)}
    for i, n in enumerate(lengths):
        assert shape_of[i] == expected[64 if n <= 64 else 128 if n <= 128 else 256]
    assert [b.input_ids.shape for b in batches] == [(8, 64), (4, 128), (2, 256), (2, 256)]
    with pytest.raises(UserError, match="more than the row length 256"):
        bucket(_examples([257]), (64, 256), 512)

    b = pad_rows(examples[:3], seq_len=80)
    assert b.input_ids.shape == (3, 80) and b.record_index.tolist() == [[0], [1], [2]]
    _check_batches([b], examples[:3])


@needs_shared
@pytest.mark.skipif(not BENCH.is_file(), reason="../shared/bench not present")
def test_pack_bench_file_wastes_little():
    records, _ = load_records(BENCH)
    examples, rep = tokenize(records, None, vocab_size=50257)
    batches = pack(examples, seq_len=512, rows_per_batch=4)
    _check_batches(batches, examples)
    stats = padding_stats(batches)
    assert stats["real_tokens"] == rep.tokens == 41264
    assert len(batches) == 21 and stats["efficiency"] > 0.95  # 81 rows is the lower bound (41264 / 512)


def test_row_bucket_sizes_are_few_and_pad_by_at_most_a_third():
    from mbc_jax.data import row_bucket

    for most in (1, 7, 8, 32, 100):
        for divisor in (1, 2, 4):
            sizes = set()
            for used in range(1, most + 1):
                rows = row_bucket(used, most, divisor)
                cap = -(-most // divisor) * divisor
                assert used <= rows <= cap and rows % divisor == 0
                if divisor == 1 and rows < cap:
                    assert (rows - used) * 3 <= rows, (used, rows)  # at most a third of the rows pad
                sizes.add(rows)
            assert len(sizes) <= 2 * max(1, most).bit_length()
    assert [row_bucket(u, 8) for u in range(1, 9)] == [1, 2, 3, 4, 6, 6, 8, 8]
