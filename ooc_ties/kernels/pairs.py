"""Every kernel beside its NumPy oracle, as one table: what the tests compare and the benchmark times.

:data:`PAIRS` maps each kernel (a ``@kernel`` of this package) to a :class:`Pair`: its oracle and a
*case*, a function of a random generator and a block size that builds inputs (three fine-tuned bf16
models and a base, with exact ties and cancelling values where the kernel cares) and returns two
thunks, one running the kernel and one the oracle, whose results must be equal.
``tests/test_kernel_pairs.py`` compares every pair on several sizes and seeds and checks that no
kernel is missing from the table; ``bench/kernel_bench.py`` times both thunks of every pair (the way
numbagg lists its comparisons once for tests and benchmarks). The detailed properties of each kernel
(hypothesis strategies, edge cases) stay in the kernel's own tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ooc_ties.kernels import convert, drop, histogram, norms, report, ties
from ooc_ties.kernels.keep import keep_flags, keep_flags_oracle

__all__ = ["PAIRS", "Close", "Pair"]

Thunks = tuple[Callable[[], Any], Callable[[], Any]]
"""The kernel's run and the oracle's run of one case: their results must be equal."""


@dataclass(frozen=True, slots=True)
class Pair:
    """A kernel, its oracle, and how to build a case for them."""

    kernel: Callable[..., Any]
    oracle: Callable[..., Any]
    case: Callable[[np.random.Generator, int], Thunks]


def _models(rng: np.random.Generator, n: int, k: int = 3) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """A bf16 base and ``k`` bf16 fine-tunes (uint16 bit patterns) whose task values take a few
    magnitudes, so that thresholds have ties; model 1 undoes model 0 at about half of the elements."""
    base = (rng.standard_normal(n) * 0.02).astype(np.float32)
    base_bits = convert.encode_oracle(base, np.dtype(np.uint16))
    b = convert.decode_oracle(base_bits)
    values = [b + rng.integers(-6, 7, n).astype(np.float32) * np.float32(2.0**-9) for _ in range(k)]
    if k > 1:
        values[1] = np.where(rng.random(n) < 0.5, b + (b - values[0]), values[1])
    return base_bits, tuple(convert.encode_oracle(v, np.dtype(np.uint16)) for v in values)


def _cut(rng: np.random.Generator, base: np.ndarray, fts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A threshold per model taken from its data, and a tie quota that may run out in the block."""
    thr, quota = [], []
    for ft in fts:
        a = np.abs(convert.decode_oracle(ft) - convert.decode_oracle(base))
        level = np.float32(a[rng.integers(0, a.size)])
        thr.append(level)
        quota.append(int(rng.integers(-1, int(np.count_nonzero(a == level)) + 2)))
    return np.array(thr, np.float32), np.array(quota, np.int64)


def _decode(rng: np.random.Generator, n: int) -> Thunks:
    src = rng.integers(0, 1 << 16, n).astype(np.uint16)
    out = np.empty(n, np.float32)

    def kernel() -> bytes:
        convert.decode(src, out)
        return out.tobytes()

    return kernel, lambda: convert.decode_oracle(src).tobytes()


def _encode(rng: np.random.Generator, n: int) -> Thunks:
    with np.errstate(over="ignore"):  # (values past float32's range become inf, as they may)
        src = (rng.standard_normal(n) * 10.0 ** rng.integers(-40, 39, n)).astype(np.float32)
    out = np.empty(n, np.uint16)

    def kernel() -> bytes:
        convert.encode(src, out)
        return out.tobytes()

    return kernel, lambda: convert.encode_oracle(src, out.dtype).tobytes()


def _high_histogram(rng: np.random.Generator, n: int) -> Thunks:
    base, fts = _models(rng, n)

    def kernel() -> tuple[bytes, bytes]:
        hist = np.zeros((len(fts), histogram.HIGH_BINS), np.int64)
        bad = np.full(len(fts), -1, np.int64)
        histogram.high_histogram(base, fts, hist, bad)
        return hist.tobytes(), bad.tobytes()

    def oracle() -> tuple[bytes, bytes]:
        hist, bad = histogram.high_histogram_oracle(base, fts)
        return hist.tobytes(), bad.tobytes()

    return kernel, oracle


def _low_histogram(rng: np.random.Generator, n: int) -> Thunks:
    base, fts = _models(rng, n)
    high = np.array([int(histogram.magnitude_bits_oracle(base, ft)[0] >> 16) for ft in fts], np.int64)

    def kernel() -> bytes:
        hist = np.zeros((len(fts), histogram.LOW_BINS), np.int64)
        histogram.low_histogram(base, fts, high, hist)
        return hist.tobytes()

    return kernel, lambda: histogram.low_histogram_oracle(base, fts, high).tobytes()


def _bracket_histogram(rng: np.random.Generator, n: int) -> Thunks:
    base, fts = _models(rng, n)
    n_slots = 4
    slots = np.full((len(fts), histogram.HIGH_BINS), -1, np.int64)
    for t, ft in enumerate(fts):
        seen = np.unique(histogram.magnitude_bits_oracle(base, ft) >> 16)
        seen = seen[seen < 0x7F80]  # (non-finite bins cannot be in a bracket)
        chosen = rng.choice(seen, size=min(n_slots, seen.size), replace=False)
        slots[t, chosen] = np.arange(chosen.size)
    table, span = histogram.bracket_table(slots), histogram.bracket_span(slots)

    def kernel() -> tuple[bytes, bytes, bytes]:
        counts = histogram.bracket_counts(len(fts), n_slots, table)
        bad = np.full(len(fts), -1, np.int64)
        histogram.bracket_histogram(base, fts, table, span, counts, bad)
        high, low = histogram.bracket_split(counts, slots)
        return high.tobytes(), np.ascontiguousarray(low).tobytes(), bad.tobytes()

    def oracle() -> tuple[bytes, bytes, bytes]:
        high, low, bad = histogram.bracket_histogram_oracle(base, fts, slots, n_slots)
        return high.tobytes(), np.ascontiguousarray(low).tobytes(), bad.tobytes()

    return kernel, oracle


def _count_equal(rng: np.random.Generator, n: int) -> Thunks:
    base, fts = _models(rng, n)
    pattern = np.array([int(histogram.magnitude_bits_oracle(base, ft)[0]) for ft in fts], np.int64)
    pattern[-1] = -1  # a model skipped

    def kernel() -> bytes:
        counts = np.zeros(len(fts), np.int64)
        histogram.count_equal(base, fts, pattern, counts)
        return counts.tobytes()

    return kernel, lambda: histogram.count_equal_oracle(base, fts, pattern).tobytes()


def _random_keep(rng: np.random.Generator, n: int) -> Thunks:
    key, start, p = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**40)), float(rng.random())
    keep = np.empty(n, np.uint8)

    def kernel() -> tuple[bytes, int]:
        kept = drop.random_keep(np.uint64(key), start, p, keep)
        return keep.astype(bool).tobytes(), kept

    def oracle() -> tuple[bytes, int]:
        expected = drop.random_keep_oracle(key, start, n, p)
        return expected.tobytes(), int(expected.sum())

    return kernel, oracle


def _rows(n: int) -> int:
    """A row length that divides ``n``."""
    return next(c for c in (64, 50, 7, 1) if n % c == 0)


def _rank_rows(rng: np.random.Generator, n: int) -> Thunks:
    _, (ft, *_) = _models(rng, n)
    ncols = _rows(n)
    out = np.empty(n, np.int32)

    def kernel() -> bytes:
        drop.rank_rows(ft, ncols, out)
        return out.astype(np.int64).tobytes()

    return kernel, lambda: drop.row_ranks_oracle(ft, ncols).tobytes()


def _della(rng: np.random.Generator, n: int, *, from_models: bool) -> Thunks:
    """DELLA's keep mask of one model's task vector, given as magnitudes or as the model and its base."""
    base, (ft, *_) = _models(rng, n)
    tau = convert.decode_oracle(ft) - convert.decode_oracle(base)
    ncols, key, density, epsilon = _rows(n), int(rng.integers(0, 2**63)), 0.4, 0.2
    keep = np.empty(n, np.uint8)

    def kernel() -> bytes:
        if from_models:
            drop.della_keep_task(np.uint64(key), 0, base, ft, True, ncols, density, epsilon, keep)
        else:
            drop.della_keep(np.uint64(key), 0, tau, ncols, density, epsilon, keep)
        return keep.astype(bool).tobytes()

    return kernel, lambda: drop.della_keep_oracle(key, 0, tau, ncols, density, epsilon).tobytes()


def _l1_counts(rng: np.random.Generator, n: int) -> Thunks:
    base, (ft, *_) = _models(rng, n)
    keep = (rng.random(n) < 0.3).astype(np.uint8)

    def kernel() -> tuple[float, float]:
        whole = np.zeros(norms.EXPONENTS, np.int64)
        kept = np.zeros(norms.EXPONENTS, np.int64)
        norms.l1_counts(base, ft, True, keep, whole, kept)
        return float(norms.exact_sum(whole)), float(norms.exact_sum(kept))

    def oracle() -> tuple[float, float]:
        whole, kept = norms.l1_counts_oracle(base, ft, True, keep)
        return float(np.float32(whole)), float(np.float32(kept))  # (bf16 task values: no double rounding)

    return kernel, oracle


def _general_rule(rng: np.random.Generator, n: int, fts: tuple[np.ndarray, ...], base: np.ndarray) -> tuple[Any, ...]:
    thr_hi, quota_hi = _cut(rng, base, fts)
    thr_hi = np.maximum(thr_hi, np.float32(2.0**-8))  # (the band's upper cut, above most trims)
    masks = (rng.random((len(fts), n)) < 0.6).astype(np.uint8)
    scales = (1.0 + rng.random(len(fts))).astype(np.float32)
    return thr_hi, quota_hi, masks, scales, True, np.zeros(0, np.float32)


def _elect_count(rng: np.random.Generator, n: int) -> Thunks:
    base, fts = _models(rng, n)
    thr, quota = _cut(rng, base, fts)
    weights = np.array([1.0, 0.5, 2.0], np.float32)
    sparsity = _general_rule(rng, n, fts, base) if rng.random() < 0.5 else None

    def kernel() -> bytes:
        counts = np.zeros(3, np.int64)
        ties.elect_count(base, fts, thr, quota, weights, counts, np.zeros(0, np.int64), sparsity)
        return counts.tobytes()

    return kernel, lambda: ties.elect_count_oracle(base, fts, thr, quota, weights, sparsity).tobytes()


def _merge(rng: np.random.Generator, n: int) -> Thunks:
    """A merge, and half of the time the same merge counting the report's statistics (``counts``)."""
    base, fts = _models(rng, n)
    thr, quota = _cut(rng, base, fts)
    weights = np.array([1.0, 0.5, 2.0], np.float32)
    lam, zero_positive = np.float32(0.7), bool(rng.random() < 0.5)
    consensus, normalize = bool(rng.random() < 0.8), bool(rng.random() < 0.8)
    sparsity = _general_rule(rng, n, fts, base) if rng.random() < 0.5 else None
    counting = bool(rng.random() < 0.5)
    offset = int(rng.integers(0, 100))

    def split(arrays: tuple[np.ndarray, ...]) -> tuple[Any, ...]:
        if not counting:
            return tuple(a.tobytes() for a in arrays)
        merged, votes, magnitudes, elected, norms_, dots, signs, counts, kept_hist, totals, discarded = arrays
        exact = (merged, votes, magnitudes, elected, signs, counts, kept_hist, totals)
        return Close(norms_, dots, discarded), b"".join(a.tobytes() for a in exact)

    def kernel() -> tuple[Any, ...]:
        out = np.empty(n, np.uint16)
        votes = np.zeros(4, np.int64)
        none = np.zeros(0, np.int64)
        counted = (report.magnitude_histogram(len(fts)), np.zeros(n, np.int8), *report.interference_outputs(3))
        ties.merge(
            base, fts, thr, quota, weights, lam, zero_positive, consensus, normalize, out, votes, none,
            none, np.zeros(0, np.uint16), sparsity, (offset, *counted) if counting else None,
        )  # fmt: skip
        return split((out, votes[:3], *counted) if counting else (out, votes[:3]))

    def oracle() -> tuple[Any, ...]:
        arrays = ties.merge_oracle(
            base, fts, thr, quota, weights, lam, zero_positive, np.dtype(np.uint16),
            consensus=consensus, normalize=normalize, sparsity=sparsity, offset=offset if counting else None,
        )  # fmt: skip
        return split(arrays)

    return kernel, oracle


def _keep_flags(rng: np.random.Generator, n: int) -> Thunks:
    base, fts = _models(rng, n)
    thr, quota = _cut(rng, base, fts)
    thr_hi, quota_hi = np.maximum(thr[1], thr[0]), int(quota[1])
    keep = np.empty(n, np.uint8)

    def kernel() -> tuple[bytes, int]:
        kept = keep_flags(base, fts[0], True, thr[0], int(quota[0]), thr_hi, quota_hi, keep)
        return keep.astype(bool).tobytes(), kept

    def oracle() -> tuple[bytes, int]:
        expected = keep_flags_oracle(base, fts[0], True, thr[0], int(quota[0]), thr_hi, quota_hi)
        return expected.tobytes(), int(expected.sum())

    return kernel, oracle


class Close:
    """Float64 sums that must agree within rounding (``==`` is ``np.allclose`` at a relative 1e-9):
    a kernel and its oracle add the same values in different orders."""

    def __init__(self, *arrays: np.ndarray) -> None:
        self.values = np.concatenate([np.ravel(a) for a in arrays])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Close) and bool(np.allclose(self.values, other.values, rtol=1e-9, atol=1e-300))

    def __repr__(self) -> str:
        return f"Close({self.values!r})"


PAIRS: Mapping[str, Pair] = {
    "decode": Pair(convert.decode, convert.decode_oracle, _decode),
    "encode": Pair(convert.encode, convert.encode_oracle, _encode),
    "high_histogram": Pair(histogram.high_histogram, histogram.high_histogram_oracle, _high_histogram),
    "low_histogram": Pair(histogram.low_histogram, histogram.low_histogram_oracle, _low_histogram),
    "bracket_histogram": Pair(histogram.bracket_histogram, histogram.bracket_histogram_oracle, _bracket_histogram),
    "count_equal": Pair(histogram.count_equal, histogram.count_equal_oracle, _count_equal),
    "random_keep": Pair(drop.random_keep, drop.random_keep_oracle, _random_keep),
    "rank_rows": Pair(drop.rank_rows, drop.row_ranks_oracle, _rank_rows),
    "della_keep": Pair(drop.della_keep, drop.della_keep_oracle, partial(_della, from_models=False)),
    "della_keep_task": Pair(drop.della_keep_task, drop.della_keep_oracle, partial(_della, from_models=True)),
    "l1_counts": Pair(norms.l1_counts, norms.l1_counts_oracle, _l1_counts),
    "elect_count": Pair(ties.elect_count, ties.elect_count_oracle, _elect_count),
    "merge": Pair(ties.merge, ties.merge_oracle, _merge),
    "keep_flags": Pair(keep_flags, keep_flags_oracle, _keep_flags),
}
"""Every kernel of :mod:`ooc_ties.kernels` by name, with its oracle and a case."""
