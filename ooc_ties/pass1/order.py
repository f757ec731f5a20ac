"""Order statistics of ``|tau|`` per group and model, exact, by a radix select over float32 bit patterns.

For finite non-negative float32 values the bit pattern is monotonic in the value, so the ``rank``-th
smallest ``|tau|`` of a group is found without sorting:

1. a histogram of the high 16 bits over every block names the bin holding the wanted rank;
2. a histogram of the low 16 bits of the values in that bin names the exact bit pattern.

Both are integer histograms added across blocks, so the threshold is exactly the value a full sort
would give. The two levels share one read: a high-bits histogram of a fixed sample of the group's blocks
(every ``SAMPLE_STRIDE``-th) names the few bins most likely to hold the wanted rank (the *bracket*, see
:func:`choose_bracket`), and one read of every block counts the high-bits histogram between the
bracket's lowest and highest bins (its *span*), the values below and above the span, and the low bits
of every value in the bracket. If the exact bin, known after that read, is in the bracket the pattern is
exact at once; if it is in the span, a second read counts the low bits of that bin; if it lies outside
the span, the two-read select runs for that model. Either way the result is the same, bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.config import MergeOptions, TrimRule
from ooc_ties.kernels.histogram import (
    HIGH_BINS,
    LOW_BINS,
    bracket_counts,
    bracket_histogram,
    bracket_span,
    bracket_split,
    bracket_table,
    high_histogram,
    low_histogram,
)
from ooc_ties.kernels.ties import elect_count
from ooc_ties.pass1.costs import BRACKET_BINS, threshold_sample
from ooc_ties.pass1.scan import Scan
from ooc_ties.pass1.thresholds import GroupThreshold

__all__ = [
    "RANK_SLACK",
    "band_counts",
    "band_thresholds",
    "choose_bracket",
    "estimated_thresholds",
    "group_thresholds",
    "kept_count",
]

logger = logging.getLogger(__name__)

RANK_SLACK = 0.01
"""The sample's estimate of the wanted rank is trusted to within about 1% of the group (one standard
deviation). Blocks differ more than a binomial sample's error says: on the synthetic 1B tensors, a
sample of 1 block in 4 put the 80% rank 1.3% of the tensor away from the truth."""


def _select(hist: np.ndarray, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th smallest value (1-based), and how many values lie below it."""
    cumulative = np.cumsum(hist)
    index = int(np.searchsorted(cumulative, rank))
    return index, int(cumulative[index] - hist[index])


def kept_count(size: int, density: float, trim: TrimRule) -> int:
    """How many of ``size`` values a trim at ``density`` keeps: ``int(size * density)`` in double
    precision, as the reference code does (at least 1 under ``topk``, as mergekit keeps)."""
    m = int(size * density)
    return max(1, m) if trim is TrimRule.TOPK else m


def band_counts(size: int, density: float, gamma: float) -> tuple[int, int]:
    """Breadcrumbs' cuts as mergekit 0.1.5's ``magnitude_outliers`` computes them: ``(m_lo, m_hi)``, the
    ``m_lo`` largest values less the ``m_hi`` largest are kept (``int(size * density)`` of them). The
    ``gamma`` outliers are fewer when there are not enough small values to drop."""
    target = int(density * size)
    top = int(gamma * size)
    bottom = max(0, size - target - top)
    return size - bottom, size - bottom - target


def wanted_rank(size: int, m: int, trim: TrimRule, exact: bool = False) -> int | None:
    """The ascending rank of the threshold that keeps the ``m`` largest of ``size`` values; ``None``
    to keep all (``m >= size``), ``0`` to keep none (``m == 0`` and an ``exact`` count, the band's cuts;
    a trim under the ``threshold`` rule keeps the values equal to the largest then, as the reference
    code does)."""
    if m >= size:
        return None
    if m <= 0 and (exact or trim is TrimRule.TOPK):
        return 0
    return size - m + 1 if trim is TrimRule.TOPK else size - m


def group_thresholds(
    scan: Scan,
    blocks: Sequence[BlockRef],
    options: MergeOptions,
    label: str,
    counts: Sequence[int] | None = None,
    votes: np.ndarray | None = None,
) -> tuple[GroupThreshold, ...]:
    """The threshold of every model over one group of ``blocks``: the one keeping ``counts[t]`` values
    (by default, each model's density of the group). ``votes``: if given (four int64), the one-read
    select also adds ``(#S > 0, #S < 0, #open)`` of every block under thresholds estimated from its
    sample (:func:`estimated_thresholds`) into ``votes[:3]`` and sets ``votes[3]`` to 1: an estimate of
    the majority sign for no read of its own (not counted where the sample is the whole group)."""
    size = sum(b.stop - b.start for b in blocks)
    exact = counts is not None
    if counts is None:
        counts = [kept_count(size, d, options.trim) for d in options.model_densities(scan.n)]
    wanted = [wanted_rank(size, m, options.trim, exact) if size else None for m in counts]
    if all(w is None or w == 0 for w in wanted):
        return tuple(_trivial(size, w) for w in wanted)
    ranks = np.array([1 if not w else w for w in wanted], np.int64)  # (1: any rank, unused)
    groups = []
    for rank, m, (high_bin, below_high, low) in zip(
        wanted, counts, levels(scan, blocks, ranks, size, label, votes), strict=True
    ):
        if not rank:
            groups.append(_trivial(size, rank))
            continue
        low_bin, below_low = _select(low, rank - below_high)
        equal = int(low[low_bin])
        less = below_high + below_low
        pattern = (high_bin << 16) | low_bin
        if options.trim is TrimRule.THRESHOLD:
            groups.append(GroupThreshold(size, pattern, -1, size - less))
        else:
            keep_equal = m - (size - less - equal)
            groups.append(GroupThreshold(size, pattern, -1 if keep_equal == equal else keep_equal, m))
    return tuple(groups)


def band_thresholds(
    scan: Scan, blocks: Sequence[BlockRef], options: MergeOptions, label: str
) -> tuple[tuple[GroupThreshold, ...], tuple[GroupThreshold, ...]]:
    """Breadcrumbs' two cuts of every model over one group: the values the lower cut keeps, less those
    the upper cut keeps, are the band (each cut an exact order statistic, ties by the trim rule)."""
    size = sum(b.stop - b.start for b in blocks)
    cuts = [
        band_counts(size, d, g) if d < 1.0 else (size, 0)
        for d, g in zip(options.model_densities(scan.n), options.model_gammas(scan.n), strict=True)
    ]
    lower = group_thresholds(scan, blocks, options, label, [lo for lo, _ in cuts])
    upper = group_thresholds(scan, blocks, options, f"{label}outliers: ", [hi for _, hi in cuts])
    return lower, upper


def _trivial(size: int, rank: int | None) -> GroupThreshold:
    return GroupThreshold.keep_all(size) if rank is None else GroupThreshold.keep_none(size)


def levels(
    scan: Scan, blocks: Sequence[BlockRef], ranks: np.ndarray, size: int, label: str, votes: np.ndarray | None = None
) -> list[tuple[int, int, np.ndarray]]:
    """Per model ``t``: the high bin holding the ``ranks[t]``-th smallest ``|tau|`` of the group, how
    many values lie below that bin, and the bin's low-bits histogram (exactly the two-read select's).
    ``votes``: see :func:`group_thresholds` (counted only where the sample is not the whole group)."""
    sample = threshold_sample(blocks)
    if len(sample) == len(blocks):  # the sample would be the whole group: the two-read select
        high = read_high(scan, f"{label}thresholds", blocks)
        picks = [_select(high[t], int(ranks[t])) for t in range(scan.n)]
        bins = np.array([b for b, _ in picks], np.int64)
        low = read_low(scan, f"{label}thresholds, second read", blocks, bins)
        return [(b, below, low[t]) for t, (b, below) in enumerate(picks)]
    # The sample only steers: a non-finite value is reported by the full read, in block order.
    sampled = read_high(scan, f"{label}threshold sample", sample, check=False)
    slots = np.full((scan.n, HIGH_BINS), -1, np.int32)
    chance = []
    for t in range(scan.n):
        bins, p = choose_bracket(sampled[t], int(ranks[t]), size)
        slots[t, bins] = np.arange(len(bins))
        chance.append(p)
    estimate = estimated_thresholds(sampled, ranks, size) if votes is not None else None
    del sampled
    span = bracket_span(slots)
    states = read_bracketed(scan, f"{label}thresholds", blocks, slots, span, estimate)
    if votes is not None:
        votes[:3] += sum((state[1] for state in states), np.zeros(3, np.int64))
        votes[3] = 1  # (counted)
        states = [state[0] for state in states]
    split = [bracket_split(counts, slots) for counts in states]
    high = sum((h for h, _ in split), np.zeros((scan.n, HIGH_BINS), np.int64))
    picks = [_select(high[t], int(ranks[t])) for t in range(scan.n)]
    lows: list[np.ndarray] = []
    outside = np.full(scan.n, -1, np.int64)  # a bin in the span but not in the bracket: its low bits
    unknown = np.zeros(scan.n, np.bool_)  # beyond the span: the bin itself is not known
    for t, (b, _) in enumerate(picks):
        slot = int(slots[t, b])
        lows.append(sum((low[t, slot] for _, low in split), np.zeros(LOW_BINS, np.int64)))
        if not span[t, 0] <= b < span[t, 1]:
            unknown[t] = True
        elif slot < 0:
            outside[t] = b
        where = f"bin {b:#x} {'outside' if slot < 0 else 'in'}"
        logger.debug(
            "pass 1: %smodel %d: threshold %s the bracket (estimated chance %.3f)",
            label,
            t + 1,
            f"{'below' if b < span[t, 0] else 'above'} the span of" if unknown[t] else where,
            chance[t],
        )
    del states, split
    if unknown.any():  # the two-read select; only the models that need it are kept
        full = read_high(scan, f"{label}thresholds, second read", blocks)
        for t in np.flatnonzero(unknown).tolist():
            picks[t] = _select(full[t], int(ranks[t]))
            outside[t] = picks[t][0]
    if (outside >= 0).any():
        label_low = "third read" if unknown.any() else "second read"
        low = read_low(scan, f"{label}thresholds, {label_low}", blocks, outside)
        for t in range(scan.n):
            if outside[t] >= 0:
                lows[t] = low[t]
    return [(b, below, lows[t]) for t, (b, below) in enumerate(picks)]


def read_high(scan: Scan, label: str, blocks: Sequence[BlockRef], *, check: bool = True) -> np.ndarray:
    """High-bits histograms of ``blocks``; a non-finite value is an error only if ``check``."""

    def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], hist: np.ndarray) -> None:
        bad = np.full(scan.n, -1, np.int64)  # per block: a worker goes on after another block fails
        high_histogram(base, fts, hist, bad)
        if check:
            scan.check_finite(ref, bad)

    states = scan.run(label, blocks, work, lambda: np.zeros((scan.n, HIGH_BINS), np.int64))
    return sum(states, np.zeros((scan.n, HIGH_BINS), np.int64))


def read_bracketed(
    scan: Scan,
    label: str,
    blocks: Sequence[BlockRef],
    slots: np.ndarray,
    span: np.ndarray,
    estimate: np.ndarray | None = None,
) -> list[Any]:
    """One read for both levels: per worker, the counts of :func:`bracket_histogram` for ``slots``
    and their ``span`` (:func:`bracket_span`); with ``estimate`` (float32 thresholds), per worker the
    counts and the sign votes under those thresholds (every tie kept)."""
    table = bracket_table(slots)
    keep_all = np.full(scan.n, -1, np.int64)
    no_count = np.zeros(0, np.int64)

    def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], state: Any) -> None:
        bad = np.full(scan.n, -1, np.int64)
        counts = state if estimate is None else state[0]
        bracket_histogram(base, fts, table, span, counts, bad)
        scan.check_finite(ref, bad)
        if estimate is not None:
            elect_count(base, fts, estimate, keep_all, scan.weights(ref.tensor.name), state[1], no_count)

    def new_state() -> Any:
        counts = bracket_counts(scan.n, BRACKET_BINS, table)
        return counts if estimate is None else (counts, np.zeros(3, np.int64))

    return scan.run(label, blocks, work, new_state)


def estimated_thresholds(sampled: np.ndarray, ranks: np.ndarray, size: int) -> np.ndarray:
    """Float32 thresholds estimated from a sample's high-bits histograms ``sampled``: for each model, the
    lowest value of the bin that holds its wanted rank, scaled to the sample."""
    out = np.zeros(len(ranks), np.float32)
    for t, hist in enumerate(sampled):
        s = int(hist.sum())
        if s:
            rank = min(s, max(1, round(int(ranks[t]) / size * s)))
            out[t] = np.uint32(_select(hist, rank)[0] << 16).view(np.float32)
    return out


def read_low(scan: Scan, label: str, blocks: Sequence[BlockRef], high_bins: np.ndarray) -> np.ndarray:
    def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], hist: np.ndarray) -> None:
        low_histogram(base, fts, high_bins, hist)

    states = scan.run(label, blocks, work, lambda: np.zeros((scan.n, LOW_BINS), np.int64))
    return sum(states, np.zeros((scan.n, LOW_BINS), np.int64))


def choose_bracket(sampled: np.ndarray, rank: int, size: int, bins: int = BRACKET_BINS) -> tuple[np.ndarray, float]:
    """The high bins most likely to hold the ``rank``-th smallest of ``size`` values, judged from a
    sample's high-bits histogram ``sampled``: at most ``bins`` of them, in ascending order, and the
    estimated chance that the wanted bin is one of them.

    The wanted value sits at position ``p = rank / size * s`` of the ``s`` sampled values, give or take
    ``sigma``: the binomial error of a sample of ``s`` values, or :data:`RANK_SLACK` of ``s``, whichever
    is larger (blocks are not independent values). Each bin the sample saw gets the chance that a normal
    ``N(p, sigma)`` falls within the positions it covers; the bracket is the ``bins`` likeliest. So where
    bins are dense it is the run of bins around ``p``, and where they are sparse (bf16 task vectors, whose
    magnitudes are a few multiples of the base's steps) it is the few heavy bins within reach, however far
    apart. The choice only decides whether a second read is needed, never the result.
    """
    s = int(sampled.sum())
    seen = np.flatnonzero(sampled)
    if s == 0:
        return seen, 0.0
    q = rank / size
    p = q * s
    sigma = max(math.sqrt(s * q * (1.0 - q)), RANK_SLACK * s, 1.0)
    below = np.cumsum(sampled)[seen] - sampled[seen]
    lo = (below - p) / sigma
    hi = (below + sampled[seen] - p) / sigma
    near = (hi > -12.0) & (lo < 12.0)  # the rest have no chance worth a slot
    seen, lo, hi = seen[near], lo[near], hi[near]
    erf = np.frompyfunc(math.erf, 1, 1)
    chance = (0.5 * (erf(hi / math.sqrt(2.0)) - erf(lo / math.sqrt(2.0)))).astype(np.float64)
    best = np.lexsort((seen, -chance))[:bins]  # likeliest first; equal chances: lower bins
    return np.sort(seen[best]), float(chance[best].sum())
