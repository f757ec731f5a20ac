"""Pass-1 kernels: histograms of task-vector magnitudes over float32 bit patterns.

For finite non-negative float32 values the uint32 bit pattern is monotonic in the value, so ranking
magnitudes is ranking bit patterns. An exact order statistic of ``|tau|`` is found in two reads without
sorting: a histogram of the high 16 bits (the sign bit is always 0, so 32768 bins) names the bin that
holds the wanted rank; a histogram of the low 16 bits of the values inside that bin names the exact
pattern. Counts are integers, so adding per-block histograms in any order gives the same result.

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
    "LOW_BINS",
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

_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_SHIFT = np.uint32(16)
_LOW = np.uint32(0xFFFF)
_DISCARD = np.uint32(LOW_BINS)


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


def count_equal_oracle(base: np.ndarray, fts: tuple[np.ndarray, ...], pattern: np.ndarray) -> np.ndarray:
    """NumPy oracle of :func:`count_equal` for a fresh block."""
    return np.array(
        [
            int(np.count_nonzero(magnitude_bits_oracle(base, ft) == p)) if p >= 0 else 0
            for ft, p in zip(fts, pattern, strict=True)
        ],
        np.int64,
    )
