"""Pass-1 kernels: histograms of task-vector magnitudes over float32 bit patterns.

For finite non-negative float32 values the uint32 bit pattern is monotonic in the value, so ranking
magnitudes is ranking bit patterns. An exact order statistic of ``|tau|`` is found without sorting: a
histogram of the high 16 bits (the sign bit is always 0, so 32768 bins) names the bin that holds the
wanted rank; a histogram of the low 16 bits of the values inside that bin names the exact pattern.
:func:`high_histogram` and :func:`low_histogram` do this in two reads; :func:`bracket_histogram` does
both in one read when the caller can name a few candidate bins beforehand (from a sample), counting
exactly only the bins between the lowest and the highest of them. Counts are
integers, so adding per-block histograms in any order gives the same result.

Each kernel takes the base block and a tuple of fine-tuned blocks (storage arrays, see ``convert``),
computes ``tau = float32(ft) - float32(base)`` and adds into an explicit output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ooc_ties.kernels.convert import decode_oracle, load_f32
from ooc_ties.kernels.jit import f32_as_u32, kernel

__all__ = [
    "HIGH_BINS",
    "LANES",
    "LOW_BINS",
    "bracket_counts",
    "bracket_histogram",
    "bracket_histogram_oracle",
    "bracket_span",
    "bracket_split",
    "bracket_table",
    "bracket_width",
    "count_equal",
    "count_equal_oracle",
    "high_histogram",
    "high_histogram_oracle",
    "low_histogram",
    "low_histogram_oracle",
    "magnitude_bits_oracle",
]

HIGH_BINS = 1 << 15
"""Bins of the first histogram: the high 16 bits of ``|tau|``'s pattern, whose top bit is always 0."""
LOW_BINS = 1 << 16
"""Bins of the second histogram: the low 16 bits."""
LANES = 4
"""Interleaved sub-histograms of the high bits in :func:`bracket_histogram`."""

_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_SHIFT = np.uint32(16)
_LOW = np.uint32(0xFFFF)
_DISCARD = np.uint32(LOW_BINS)
_INF_BIN = 0x7F80  # the first high bin of non-finite patterns
_OFFSET = np.uint64(0xFFFFFFFF)
_SKEW = 1344  # bytes, see bracket_counts
_MASK_SHIFT = np.uint64(32)
TILE = 2048  # elements whose magnitudes bracket_histogram computes before counting them


@kernel
def high_histogram(base: Any, fts: Any, hist: np.ndarray, bad: np.ndarray) -> None:
    """``hist[t, bits(|tau_t|) >> 16] += 1`` over the block, for every model ``t``.

    A non-finite ``tau`` (NaN or infinity in an input, or a float32 overflow) is not counted; the
    first block index where it occurs is stored in ``bad[t]`` if ``bad[t]`` is still negative.
    """
    n = base.size
    # Four interleaved sub-histograms: runs of equal bins (common: magnitudes cluster) would otherwise
    # chain every increment on the previous one through memory. int32 cannot overflow: n < 2**31 / 4.
    lanes = np.zeros((4, HIGH_BINS), np.int32)
    n4 = n - n % 4
    for t in range(len(fts)):
        ft = fts[t]
        lanes[:] = 0
        nonfinite = 0
        for i in range(0, n4, 4):
            u0 = f32_as_u32(load_f32(ft, i) - load_f32(base, i)) & _ABS
            u1 = f32_as_u32(load_f32(ft, i + 1) - load_f32(base, i + 1)) & _ABS
            u2 = f32_as_u32(load_f32(ft, i + 2) - load_f32(base, i + 2)) & _ABS
            u3 = f32_as_u32(load_f32(ft, i + 3) - load_f32(base, i + 3)) & _ABS
            lanes[0, u0 >> _SHIFT] += 1  # a pattern <= 0x7FFFFFFF always has a bin, even NaN's
            lanes[1, u1 >> _SHIFT] += 1
            lanes[2, u2 >> _SHIFT] += 1
            lanes[3, u3 >> _SHIFT] += 1
            nonfinite += int(u0 >= _INF) + int(u1 >= _INF) + int(u2 >= _INF) + int(u3 >= _INF)
        for i in range(n4, n):
            u = f32_as_u32(load_f32(ft, i) - load_f32(base, i)) & _ABS
            lanes[0, u >> _SHIFT] += 1
            nonfinite += int(u >= _INF)
        if nonfinite:  # rare: take the non-finite values back out and find the first
            for i in range(n):
                u = f32_as_u32(load_f32(ft, i) - load_f32(base, i)) & _ABS
                if u >= _INF:
                    lanes[0, u >> _SHIFT] -= 1
                    if bad[t] < 0:
                        bad[t] = i
        for k in range(HIGH_BINS):
            hist[t, k] += lanes[0, k] + lanes[1, k] + lanes[2, k] + lanes[3, k]


@kernel
def low_histogram(base: Any, fts: Any, high: np.ndarray, hist: np.ndarray) -> None:
    """``hist[t, bits & 0xFFFF] += 1`` for the values whose high bits equal ``high[t]``.

    Models with ``high[t] < 0`` are skipped (their threshold needs no refinement).
    """
    n = base.size
    # Branch-free: a value outside the wanted bin is counted in an extra discard bin. With bf16 inputs
    # most values of the wanted bin share one pattern (low bits 0), so four lanes again break the chain
    # of increments on one counter.
    lanes = np.zeros((4, LOW_BINS + 1), np.int32)
    n4 = n - n % 4
    for t in range(len(fts)):
        if high[t] < 0:
            continue
        want = np.uint32(high[t])
        ft = fts[t]
        lanes[:] = 0
        for i in range(0, n4, 4):
            u0 = f32_as_u32(load_f32(ft, i) - load_f32(base, i)) & _ABS
            u1 = f32_as_u32(load_f32(ft, i + 1) - load_f32(base, i + 1)) & _ABS
            u2 = f32_as_u32(load_f32(ft, i + 2) - load_f32(base, i + 2)) & _ABS
            u3 = f32_as_u32(load_f32(ft, i + 3) - load_f32(base, i + 3)) & _ABS
            lanes[0, (u0 & _LOW) if (u0 >> _SHIFT) == want else _DISCARD] += 1
            lanes[1, (u1 & _LOW) if (u1 >> _SHIFT) == want else _DISCARD] += 1
            lanes[2, (u2 & _LOW) if (u2 >> _SHIFT) == want else _DISCARD] += 1
            lanes[3, (u3 & _LOW) if (u3 >> _SHIFT) == want else _DISCARD] += 1
        for i in range(n4, n):
            u = f32_as_u32(load_f32(ft, i) - load_f32(base, i)) & _ABS
            lanes[0, (u & _LOW) if (u >> _SHIFT) == want else _DISCARD] += 1
        for k in range(LOW_BINS):
            hist[t, k] += lanes[0, k] + lanes[1, k] + lanes[2, k] + lanes[3, k]


@kernel
def bracket_histogram(
    base: Any, fts: Any, table: np.ndarray, span: np.ndarray, counts: np.ndarray, bad: np.ndarray
) -> None:
    """Both levels in one read, for the values in a *span* of high bins around a few chosen ones (the
    *bracket*): the high-bits histogram inside the span and the low-bits histograms of the bracket's
    bins, added into ``counts``; the values below and above the span are only counted.

    ``table`` comes from :func:`bracket_table`, ``span`` from :func:`bracket_span` (model ``t``'s span
    is the high bins ``span[t, 0] <= h < span[t, 1]``), ``counts`` from :func:`bracket_counts` (int64,
    ``(models, bracket_width(slots))``, any such array works but slower); read it with
    :func:`bracket_split`. A value with pattern ``u`` inside the span, counted in lane ``l`` (0-3),
    adds 1 to ``counts[t, e + (u & m)]``, with ``e`` and ``m`` from ``table[t, l, u >> 16]``:
    ``e = l * HIGH_BINS + (u >> 16)``, ``m = 0`` outside the bracket; ``e = LANES * HIGH_BINS + slot *
    LOW_BINS``, ``m = 0xFFFF`` inside. The finite values above the span are added to lane 0 of the
    span's end bin ``span[t, 1]``, the values below it to lane 0 of bin ``span[t, 0] - 1`` (bin 0 when
    the span starts there: then there are none). Non-finite values are not counted, and ``bad`` is set
    as by :func:`high_histogram`.
    """
    n = base.size
    n_models = len(fts)
    # A tile's magnitudes are computed in a loop the compiler vectorises; a second vectorised loop
    # counts the values above the span and flags those inside it, whose indices are then packed
    # (no branch: every index is stored, the count advances by the flag) so that only they go through
    # the table. With one increment per value through the table (the previous form of this kernel,
    # 1.15 ns per value on a real bf16 block) the increments cost three times the rest; with 11-15% of
    # the values in the span, packing and counting them costs 0.86-0.93 ns. Four interleaved lanes keep
    # runs of equal high bins from chaining every increment on one counter; offset and mask share one
    # uint64 table entry so each value costs one table load.
    nonfinite = np.zeros(n_models, np.int64)
    b = np.empty(TILE, np.float32)
    u = np.empty(TILE, np.uint32)
    inside = np.empty(TILE, np.uint8)
    packed = np.empty(TILE, np.int32)
    for start in range(0, n, TILE):
        m = min(TILE, n - start)
        base_tile = base[start : start + m]
        for j in range(m):
            b[j] = load_f32(base_tile, j)
        for t in range(n_models):
            ft_tile = fts[t][start : start + m]
            for j in range(m):
                u[j] = f32_as_u32(load_f32(ft_tile, j) - b[j]) & _ABS
            first = span[t, 0]
            end = span[t, 1]
            low_edge = np.uint32(first) << _SHIFT
            high_edge = np.uint32(end) << _SHIFT
            width = high_edge - low_edge
            above = 0
            bad_values = 0
            for j in range(m):
                uj = u[j]
                above += uj >= high_edge
                bad_values += uj >= _INF
                inside[j] = (uj - low_edge) < width  # unsigned: below the span wraps to a large number
            c = 0
            for j in range(m):
                packed[c] = j
                c += inside[j]
            row = counts[t]
            row[end] += above - bad_values
            row[max(first - 1, 0)] += m - c - above
            nonfinite[t] += bad_values
            e_0, e_1, e_2, e_3 = table[t, 0], table[t, 1], table[t, 2], table[t, 3]
            c4 = c - c % 4
            for q in range(0, c4, 4):
                u0, u1, u2, u3 = u[packed[q]], u[packed[q + 1]], u[packed[q + 2]], u[packed[q + 3]]
                x0, x1, x2, x3 = e_0[u0 >> _SHIFT], e_1[u1 >> _SHIFT], e_2[u2 >> _SHIFT], e_3[u3 >> _SHIFT]
                row[(x0 & _OFFSET) + (np.uint64(u0) & (x0 >> _MASK_SHIFT))] += 1
                row[(x1 & _OFFSET) + (np.uint64(u1) & (x1 >> _MASK_SHIFT))] += 1
                row[(x2 & _OFFSET) + (np.uint64(u2) & (x2 >> _MASK_SHIFT))] += 1
                row[(x3 & _OFFSET) + (np.uint64(u3) & (x3 >> _MASK_SHIFT))] += 1
            for q in range(c4, c):
                uj = u[packed[q]]
                x = e_0[uj >> _SHIFT]
                row[(x & _OFFSET) + (np.uint64(uj) & (x >> _MASK_SHIFT))] += 1
    for t in range(n_models):
        if nonfinite[t] and bad[t] < 0:  # rare: find the first
            ft = fts[t]
            for i in range(n):
                if (f32_as_u32(load_f32(ft, i) - load_f32(base, i)) & _ABS) >= _INF:
                    bad[t] = i
                    break


def bracket_width(slots: int) -> int:
    """Columns of :func:`bracket_histogram`'s ``counts`` for a bracket of ``slots`` high bins."""
    return LANES * HIGH_BINS + slots * LOW_BINS


def bracket_counts(models: int, slots: int, table: np.ndarray) -> np.ndarray:
    """Zeroed counts for :func:`bracket_histogram` with ``table``, placed :data:`_SKEW` bytes away from
    the table in the low 12 address bits.

    Large NumPy arrays all start at the same offset in a page. Then a value's table entry and its
    counter (same bin, same lane) share their low 12 address bits, and the CPU holds each table load
    back behind the previous value's store to that counter (4K aliasing): measured 1.5-1.6 ns per
    value instead of 1.1 on a real bf16 block; offsets that are multiples of 1 KiB cost 1.2-1.3.
    """
    # Tried: an anonymous map instead of the heap, whose untouched pages cost no memory (a per-tensor
    # merge keeps 30-40 MiB of counts resident from the heap). Its page faults, one per page that
    # bracket_split reads for every tensor, made the 1B mergekit preset's pass 1 2.3 s slower.
    width = bracket_width(slots)
    buffer = np.zeros(models * width + 4096 // 8, np.int64)
    start = (table.ctypes.data + _SKEW - buffer.ctypes.data) % 4096 // 8
    counts: np.ndarray = buffer[start : start + models * width].reshape(models, width)
    return counts


def bracket_table(slots: np.ndarray) -> np.ndarray:
    """The lookup table of :func:`bracket_histogram` for ``slots`` (int, ``(models, HIGH_BINS)``): the
    bracket slot of each high bin, ``-1`` outside the bracket; slots number ``0..k-1``. The bins of
    non-finite patterns cannot be in a bracket."""
    if (slots[:, _INF_BIN:] >= 0).any():
        raise ValueError(f"high bins from {_INF_BIN:#x} up hold non-finite values and cannot be in a bracket")
    models = slots.shape[0]
    lanes = np.arange(LANES, dtype=np.uint64)[:, None] * np.uint64(HIGH_BINS)
    outside = lanes + np.arange(HIGH_BINS, dtype=np.uint64)[None, :]  # (LANES, HIGH_BINS), mask 0
    table = np.empty((models, LANES, HIGH_BINS), np.uint64)
    for t in range(models):
        inside = slots[t] >= 0
        offset = np.uint64(LANES * HIGH_BINS) + slots[t][inside].astype(np.uint64) * np.uint64(LOW_BINS)
        table[t] = outside
        table[t][:, inside] = offset | (np.uint64(0xFFFF) << _MASK_SHIFT)
    return table


def bracket_span(slots: np.ndarray) -> np.ndarray:
    """The span of :func:`bracket_histogram` for ``slots`` (as for :func:`bracket_table`): per model,
    ``[first, end)``, the high bins from the bracket's lowest to its highest; ``[0, 0)`` for a model
    with an empty bracket."""
    span = np.zeros((slots.shape[0], 2), np.int64)
    for t in range(slots.shape[0]):
        inside = np.flatnonzero(slots[t] >= 0)
        if inside.size:
            span[t] = inside[0], inside[-1] + 1
    return span


def bracket_split(counts: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(high, low)`` from :func:`bracket_histogram`'s ``counts`` and the ``slots`` its table was made
    from: the high-bits histograms ``(models, HIGH_BINS)``, as :func:`high_histogram` gives them inside
    each model's span and with every value below (above) the span in the bin below (the bin after) it,
    and a view ``(models, slots, LOW_BINS)`` of the low-bits histograms of each slot's bin."""
    models = counts.shape[0]
    high = counts[:, : LANES * HIGH_BINS].reshape(models, LANES, HIGH_BINS).sum(axis=1)
    low = counts[:, LANES * HIGH_BINS :].reshape(models, -1, LOW_BINS)
    for t in range(models):
        inside = np.flatnonzero(slots[t] >= 0)
        high[t, inside] = low[t, slots[t, inside]].sum(axis=1)
    return high, low


@kernel
def count_equal(base: Any, fts: Any, pattern: np.ndarray, counts: np.ndarray) -> None:
    """``counts[t] += #{i : bits(|tau_t[i]|) == pattern[t]}``; models with ``pattern[t] < 0`` skipped."""
    n = base.size
    for t in range(len(fts)):
        if pattern[t] < 0:
            continue
        want = np.uint32(pattern[t])
        ft = fts[t]
        c = 0
        for i in range(n):
            c += (f32_as_u32(load_f32(ft, i) - load_f32(base, i)) & _ABS) == want
        counts[t] += c


def magnitude_bits_oracle(base: np.ndarray, ft: np.ndarray) -> np.ndarray:
    """The uint32 bit patterns of ``|float32(ft) - float32(base)|``, in NumPy."""
    with np.errstate(over="ignore", invalid="ignore"):
        tau = decode_oracle(ft) - decode_oracle(base)
    bits: np.ndarray = tau.view(np.uint32) & np.uint32(0x7FFFFFFF)
    return bits


def high_histogram_oracle(base: np.ndarray, fts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """NumPy oracle of :func:`high_histogram`: (histograms, first bad index or -1) for a fresh block."""
    hist = np.zeros((len(fts), HIGH_BINS), np.int64)
    bad = np.full(len(fts), -1, np.int64)
    for t, ft in enumerate(fts):
        u = magnitude_bits_oracle(base, ft)
        finite = u < 0x7F800000
        if not finite.all():
            bad[t] = int(np.argmin(finite))
        hist[t] = np.bincount(u[finite] >> 16, minlength=HIGH_BINS)
    return hist, bad


def low_histogram_oracle(base: np.ndarray, fts: tuple[np.ndarray, ...], high: np.ndarray) -> np.ndarray:
    """NumPy oracle of :func:`low_histogram` for a fresh block."""
    hist = np.zeros((len(fts), LOW_BINS), np.int64)
    for t, ft in enumerate(fts):
        if high[t] >= 0:
            u = magnitude_bits_oracle(base, ft)
            hist[t] = np.bincount(u[(u >> 16) == high[t]] & 0xFFFF, minlength=LOW_BINS)
    return hist


def bracket_histogram_oracle(
    base: np.ndarray, fts: tuple[np.ndarray, ...], slots: np.ndarray, n_slots: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy oracle of :func:`bracket_histogram` then :func:`bracket_split` for a fresh block:
    (high histograms, low histograms ``(models, n_slots, LOW_BINS)``, first bad index or -1)."""
    full, bad = high_histogram_oracle(base, fts)
    hist = np.zeros_like(full)
    low = np.zeros((len(fts), n_slots, LOW_BINS), np.int64)
    for t, (first, end) in enumerate(bracket_span(slots)):
        hist[t, first:end] = full[t, first:end]
        hist[t, max(first - 1, 0)] += full[t, :first].sum()
        hist[t, end] += full[t, end:].sum()
        u = magnitude_bits_oracle(base, fts[t])
        u = u[u < 0x7F800000]
        for h in np.flatnonzero(slots[t] >= 0):
            low[t, slots[t, h]] = np.bincount(u[(u >> 16) == h] & 0xFFFF, minlength=LOW_BINS)
    return hist, low, bad


def count_equal_oracle(base: np.ndarray, fts: tuple[np.ndarray, ...], pattern: np.ndarray) -> np.ndarray:
    """NumPy oracle of :func:`count_equal` for a fresh block."""
    return np.array(
        [
            int(np.count_nonzero(magnitude_bits_oracle(base, ft) == p)) if p >= 0 else 0
            for ft, p in zip(fts, pattern, strict=True)
        ],
        np.int64,
    )
