"""Pass-2 kernels: trim, elect, disjoint merge, one element at a time, in float32.

Per element ``i`` with base ``b`` and fine-tuned values ``x_t`` (t in the order given), exactly:

1. ``tau_t = x_t - b``; ``keep_t = |tau_t| > thr_t``, or ``|tau_t| == thr_t`` and this is one of the
   first ``quota_t`` such elements of the block (``quota_t < 0``: all of them);
   ``trimmed_t = tau_t * keep_t`` (so a dropped negative value is -0.0, as in the reference code).
   Under the general rule (``sparsity``, the methods other than TIES and task arithmetic), ``keep_t``
   also requires that the value is not in the band's upper cut (``|tau_t| > thr_hi_t``, or equal and
   one of the first ``quota_hi_t`` such values of the block) and that the drop mask keeps it, and
   ``trimmed_t = (tau_t * keep_t) * scale_t`` (the rescale factor); without a base (``linear``),
   ``b = 0`` and ``tau_t = x_t``; with a sign's model (``--sign-from``), ``S`` of step 3 is its task
   value ``sign - b`` instead of the vote.
2. ``v_t = w_t * trimmed_t``; ``S = ((0 + v_0) + v_1) + ...``.
3. With a *consensus* (TIES): elected sign positive iff ``S > 0``, or ``S == 0`` and ``zero_positive``;
   ``agree_t = v_t > 0`` if positive else ``v_t < 0``;
   ``num = ((0 + v_0*agree_0) + v_1*agree_1) + ...``, ``den`` likewise with ``w_t``; ``den == 0 -> 1``.
   Without (task arithmetic): ``num = ((0 + v_0) + v_1) + ...``, ``den`` likewise with ``w_t``;
   ``|den| < 1e-8 -> 1`` (mergekit's rule).
4. ``out = b + lam * (num / den)`` if ``normalize``, else ``b + lam * num``, encoded to the output's
   storage (see ``convert``).

No fused multiply-add (fastmath is off), no reassociation. docs/numerics.md explains each choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ooc_ties.kernels.convert import decode_oracle, encode_oracle, load_f32, store_f32, stored_finite
from ooc_ties.kernels.jit import helper, kernel
from ooc_ties.kernels.keep import _sparsified_oracle, _sparsify_tile, _trim_tile
from ooc_ties.kernels.report import LANES, _count_tile, interference_oracle

__all__ = [
    "TILE",
    "elect_count",
    "elect_count_oracle",
    "merge",
    "merge_oracle",
]

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_INF = np.float32(np.inf)
_TINY_DIVISOR = np.float32(1e-8)
"""Without a consensus, a sum of weights smaller than this in magnitude divides as 1 (mergekit's rule)."""

TILE = 2048
"""Elements per tile: the kernels sweep a tile once per model, with every scratch row in L1/L2 cache.

A tile is a unit of work inside a kernel call, not of the arithmetic: each element still sees exactly
the operations of the module docstring, in the same order, so results do not depend on it.

Loops index tile *slices* from 0: Numba wraps negative indices, and for ``block[start + j]`` LLVM
cannot prove the index non-negative, so the wrap test stays in the loop and keeps it scalar. With
``tile[j]`` it vectorises: 1.7 -> 0.45 ns per parameter for the vote on a cached block."""


@helper
def _vote_tile(
    base: Any,
    fts: Any,
    start: int,
    m: int,
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    seen: np.ndarray,
    kept: np.ndarray,
    b: np.ndarray,
    s: np.ndarray,
    v: np.ndarray,
    nonzero: np.ndarray,
    count: bool,
    sparsity: Any,
    seen_hi: np.ndarray,
) -> None:
    """Decode the base tile into ``b`` (zeros for a method without a base, ``linear``), sum the weighted
    trimmed values (``v_t = w_t * trimmed_t``)
    into ``s`` (step 2), mark in ``nonzero`` the elements with some non-zero weighted value, and, if
    ``count``, add each model's count of kept values to ``kept[t]``.

    Each model's trimmed values are left in the row ``v[t % len(v)]``: give ``v`` one row per model to
    keep them all (``merge`` reuses them), or a single row when only the sums are wanted (one row stays
    in L1 cache: a row per model made ``elect_count`` 20-30% slower on a block streamed from memory)."""
    tile = base[start : start + m]
    if sparsity is None or sparsity[4]:
        for j in range(m):
            b[j] = load_f32(tile, j)
    else:  # no base (linear): the models' own values
        b[:m] = _ZERO
    for j in range(m):
        s[j] = _ZERO
        nonzero[j] = False
    for t in range(len(fts)):
        vt = v[t % v.shape[0]]
        ft = fts[t][start : start + m]
        if sparsity is None:
            seen[t], tile_kept = _trim_tile(ft, b, m, thr[t], quota[t], seen[t], vt, count)
        else:
            thr_hi, quota_hi, masks, scales, _, _ = sparsity
            band = thr_hi.size > 0
            seen[t], seen_hi[t], tile_kept = _sparsify_tile(
                ft,
                b,
                m,
                thr[t],
                quota[t],
                seen[t],
                thr_hi[t] if band else _INF,
                quota_hi[t] if band else 0,
                seen_hi[t],
                masks[t, start : start + m],  # (no mask: shape (models, 0), an empty slice)
                scales[t] if scales.size > 0 else _ONE,
                vt,
            )
        if count:  # (``kept`` may be empty then: numba does not check bounds)
            kept[t] += tile_kept
        w = weights[t]
        for j in range(m):
            vj = w * vt[j]
            s[j] = s[j] + vj
            nonzero[j] = nonzero[j] | (vj != _ZERO)
    if sparsity is not None and sparsity[5].size > 0:  # the sign's model elects, not the vote
        sign_tile = sparsity[5][start : start + m]
        for j in range(m):
            s[j] = load_f32(sign_tile, j) - b[j]


@kernel
def elect_count(
    base: Any,
    fts: Any,
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    counts: np.ndarray,
    kept: np.ndarray,
    sparsity: Any = None,
) -> None:
    """``counts[0] += #{S > 0}``, ``counts[1] += #{S < 0}``, ``counts[2] += #open`` over the block (for
    the majority sign; *open* elements are defined at :func:`merge`), and, if ``kept`` is not empty,
    ``kept[t] +=`` the values of model ``t`` the trim keeps (as :func:`merge` counts them).
    ``sparsity``: as for :func:`merge`."""
    n = base.size
    seen = np.zeros(len(fts), np.int64)
    seen_hi = np.zeros(len(fts), np.int64)
    count = kept.size > 0
    b = np.empty(TILE, np.float32)
    s = np.empty(TILE, np.float32)
    v = np.empty((1, TILE), np.float32)  # one row shared by the models: only the sums are wanted
    nonzero = np.empty(TILE, np.bool_)
    pos = 0
    neg = 0
    open_ = 0
    for start in range(0, n, TILE):
        m = min(TILE, n - start)
        _vote_tile(base, fts, start, m, thr, quota, weights, seen, kept, b, s, v, nonzero, count, sparsity, seen_hi)
        for j in range(m):
            pos += s[j] > _ZERO
            neg += s[j] < _ZERO
            open_ += (s[j] == _ZERO) & nonzero[j]
    counts[0] += pos
    counts[1] += neg
    counts[2] += open_


@helper
def _alternate(
    fts: Any,
    i: int,
    bj: np.float32,
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    lam: np.float32,
    normalize: bool,
    sign: np.float32,
    alt: Any,
    k: int,
) -> bool:
    """Store at ``alt[k]`` the result of element ``i`` under elected ``sign``; False if it cannot tell.

    The same operations, in the same order, as :func:`merge` (steps 1, 2, 4, 5). It cannot tell when a
    model's ``|tau|`` equals its threshold under a tie quota: whether that value is kept depends on the
    ties before it in the block.
    """
    num = _ZERO
    den = _ZERO
    for t in range(len(fts)):
        tau = load_f32(fts[t], i) - bj
        a = abs(tau)
        if quota[t] >= 0 and a == thr[t]:
            return False
        v = tau if a >= thr[t] else tau * _ZERO
        w = weights[t]
        vj = w * v
        agree = vj * sign > _ZERO
        num = num + (vj if agree else vj * _ZERO)
        den = den + (w if agree else w * _ZERO)
    if normalize:
        d = den if den != _ZERO else _ONE
        store_f32(alt, k, bj + lam * (num / d))
    else:
        store_f32(alt, k, bj + lam * num)
    return True


@kernel
def merge(
    base: Any,
    fts: Any,
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    lam: np.float32,
    zero_positive: bool,
    consensus: bool,
    normalize: bool,
    out: Any,
    votes: np.ndarray,
    kept: np.ndarray,
    open_at: np.ndarray,
    open_alt: Any,
    sparsity: Any = None,
    counts: Any = None,
) -> int:
    """Merge one block into ``out``; return the first index whose stored result is not finite, or -1.

    ``sparsity``: ``None`` for the trim of step 1 alone (TIES, task arithmetic), else the tuple
    ``(thr_hi, quota_hi, masks, scales, with_base, sign)`` of the general rule (:func:`_sparsify_tile`):
    the band's upper cut per model (empty arrays: no band), the block's drop masks (uint8, one row
    per model; shape ``(models, 0)``: none), the rescale factor per model (empty: none), whether
    the method has a base (``False``: ``b = 0``, the models' own values are merged, ``linear``), and
    the block of the model whose task value ``sign - b`` takes the place of the vote ``S`` (empty: the
    vote elects).
    Open elements are not recorded under the general rule (:func:`_alternate` cannot tell them).

    ``kept[t]`` receives how many values of model ``t`` the trim kept (step 1), unless ``kept`` is
    empty: pass 2 counts them in the blocks pass 1 sampled and checks them against pass 1's counts of
    the same blocks, which catches inputs that are not those pass 1 read.

    ``votes`` receives ``#{S > 0}``, ``#{S < 0}``, the number of *open* elements (``S == 0`` with
    some non-zero ``v_t``: values of both signs that cancel exactly, the only elements whose result
    depends on ``zero_positive``), and how many of those were not recorded. The first
    ``len(open_at)`` open elements are recorded: their block index in ``open_at`` and their result
    under the other sign in ``open_alt`` (same storage as ``out``), so that a block merged under a
    guessed majority sign can be corrected in place if the guess was wrong. An open element is not
    recorded beyond that capacity, or when a tie quota decides one of its values (see
    :func:`_alternate`); a block with unrecorded open elements must be merged again instead.

    ``counts`` (``--report``): ``None``, or the tuple ``(offset, magnitudes, elected, norms, dots, signs,
    counts, kept_hist, totals, discarded)`` into which the same tile loop adds the block's interference
    statistics (:func:`ooc_ties.kernels.report._count_tile`; ``offset`` is the block's first index in its
    tensor). Numba compiles the two apart (a ``None`` argument prunes the branch), so a merge without
    counts runs none of that code, and one with counts merges by the very same code.

    Per tile: sweep 1 (:func:`_vote_tile`) keeps each model's trimmed values in a row and sums them;
    sweep 2 adds the agreeing ones into ``num`` and ``den``; a last loop writes the results. These
    element loops are branch-free, so the compiler vectorises them. Open elements are found afterwards, and only
    while there is room to record them: they are a few percent of a bf16 model's elements, and a test
    for them inside the result loop (a mispredicted branch, and a loop that no longer vectorises)
    cost as much as all the arithmetic (6.0 against 3.0 ns per parameter, docs/performance.md).
    """
    n = base.size
    n_models = len(fts)
    seen = np.zeros(n_models, np.int64)
    seen_hi = np.zeros(n_models, np.int64)
    b = np.empty(TILE, np.float32)
    s = np.empty(TILE, np.float32)
    v = np.empty((n_models, TILE), np.float32)
    sign = np.empty(TILE, np.float32)
    num = np.empty(TILE, np.float32)
    den = np.empty(TILE, np.float32)
    nonzero = np.empty(TILE, np.bool_)
    where = np.empty(TILE, np.int64)
    first_bad = -1
    pos = 0
    neg = 0
    open_ = 0
    lost = 0
    capacity = len(open_at)
    count = kept.size > 0
    other = _ONE if not zero_positive else -_ONE
    if counts is not None:  # (the report's scratch: allocated here, a helper's rows vectorised worse)
        rows = (
            np.empty(TILE, np.float32),  # the elected sign, 0 for a zero vote
            np.empty((n_models, TILE), np.float32),  # the task values
            np.empty(TILE, np.float32),  # the values discarded
            np.empty(TILE, np.int32),  # the models keeping each element
            np.empty(TILE, np.int64),  # open elements' indices
            np.empty(TILE, np.uint8),  # open elements' flags
            np.empty((4, LANES), np.float64),  # partial sums
        )
    for start in range(0, n, TILE):
        m = min(TILE, n - start)
        _vote_tile(base, fts, start, m, thr, quota, weights, seen, kept, b, s, v, nonzero, count, sparsity, seen_hi)
        tile_open = 0
        for j in range(m):
            sj = s[j]
            pos += sj > _ZERO
            neg += sj < _ZERO
            tile_open += (sj == _ZERO) & nonzero[j] & consensus
            # +1 or -1: the elected sign; v * sign > 0 is "v agrees" (multiplying by +-1 is exact)
            sign[j] = _ONE if (sj > _ZERO or (sj == _ZERO and zero_positive)) else -_ONE
            num[j] = _ZERO
            den[j] = _ZERO
        for t in range(n_models):
            vt = v[t]
            w = weights[t]
            if consensus:
                for j in range(m):
                    vj = w * vt[j]
                    agree = vj * sign[j] > _ZERO
                    num[j] = num[j] + (vj if agree else vj * _ZERO)
                    den[j] = den[j] + (w if agree else w * _ZERO)
            else:  # every model counts
                for j in range(m):
                    num[j] = num[j] + w * vt[j]
                    den[j] = den[j] + w
        bad = 0
        dest = out[start : start + m]
        if not normalize:
            for j in range(m):
                store_f32(dest, j, b[j] + lam * num[j])
                bad += not stored_finite(dest, j)
        elif consensus:
            for j in range(m):
                d = den[j] if den[j] != _ZERO else _ONE
                store_f32(dest, j, b[j] + lam * (num[j] / d))
                bad += not stored_finite(dest, j)
        else:
            for j in range(m):
                d = den[j] if abs(den[j]) >= _TINY_DIVISOR else _ONE
                store_f32(dest, j, b[j] + lam * (num[j] / d))
                bad += not stored_finite(dest, j)
        if tile_open and open_ - lost < capacity:
            found = 0
            for j in range(m):  # branch-free: the open elements' indices to the front of ``where``
                where[found] = j
                found += (s[j] == _ZERO) & nonzero[j]
            for q in range(found):
                j = where[q]
                k = open_ - lost
                if (
                    k < capacity
                    and sparsity is None
                    and _alternate(fts, start + j, b[j], thr, quota, weights, lam, normalize, other, open_alt, k)
                ):
                    open_at[k] = start + j
                else:
                    lost += 1
                open_ += 1
        else:
            open_ += tile_open
            lost += tile_open
        if bad and first_bad < 0:
            for j in range(m):
                if not stored_finite(out, start + j):
                    first_bad = start + j
                    break
        if counts is not None:
            _count_tile(fts, start, m, b, s, v, nonzero, counts, rows)
    votes[0] += pos
    votes[1] += neg
    votes[2] += open_
    votes[3] += lost
    return first_bad


# ---------------------------------------------------------------------------------------------------
# NumPy oracles: the same arithmetic, vectorised over the block, float32 throughout.


def _votes_oracle(
    base: np.ndarray,
    fts: tuple[np.ndarray, ...],
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    sparsity: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = decode_oracle(base)
    if sparsity is not None and not sparsity[4]:
        b = np.zeros(b.shape, np.float32)
    v = np.stack(
        [np.float32(weights[t]) * _sparsified_oracle(b, fts, thr, quota, sparsity, t) for t in range(len(fts))]
    ).astype(np.float32)
    s = np.zeros(b.shape, np.float32)
    for t in range(len(fts)):
        s = s + v[t]
    if sparsity is not None and sparsity[5].size:
        s = decode_oracle(sparsity[5]) - b
    return b, v, s


def elect_count_oracle(
    base: np.ndarray,
    fts: tuple[np.ndarray, ...],
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    sparsity: Any = None,
) -> np.ndarray:
    """NumPy oracle of :func:`elect_count` for fresh counts."""
    _, v, s = _votes_oracle(base, fts, thr, quota, weights, sparsity)
    open_ = (s == 0) & (v != 0).any(axis=0)
    return np.array([np.count_nonzero(s > 0), np.count_nonzero(s < 0), np.count_nonzero(open_)], np.int64)


def merge_oracle(
    base: np.ndarray,
    fts: tuple[np.ndarray, ...],
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    lam: np.float32,
    zero_positive: bool,
    out_dtype: np.dtype,
    *,
    consensus: bool = True,
    normalize: bool = True,
    sparsity: Any = None,
    offset: int | None = None,
) -> tuple[np.ndarray, ...]:
    """NumPy oracle of :func:`merge`: the encoded output block and the first three vote counts; with an
    ``offset`` (``merge`` given ``counts`` for a block at that index of its tensor), then the arrays of
    :func:`ooc_ties.kernels.report.interference_oracle`.

    The recorded open elements are checked against this oracle with ``zero_positive`` flipped."""
    b, v, s = _votes_oracle(base, fts, thr, quota, weights, sparsity)
    open_ = (s == 0) & (v != 0).any(axis=0) & consensus
    votes = np.array([np.count_nonzero(s > 0), np.count_nonzero(s < 0), np.count_nonzero(open_)], np.int64)
    positive = (s > 0) | ((s == 0) & zero_positive)
    num = np.zeros(b.shape, np.float32)
    den = np.zeros(b.shape, np.float32)
    for t in range(len(fts)):
        agree = np.where(positive, v[t] > 0, v[t] < 0) if consensus else np.ones(b.shape, bool)
        num = num + v[t] * agree.astype(np.float32)
        den = den + np.float32(weights[t]) * agree.astype(np.float32)
    if consensus:
        den[den == 0] = 1
    else:
        den[np.abs(den) < np.float32(1e-8)] = 1
    with np.errstate(over="ignore"):
        result = b + np.float32(lam) * (num / den) if normalize else b + np.float32(lam) * num
    merged = encode_oracle(result, out_dtype)
    if offset is None:
        return merged, votes
    return merged, votes, *interference_oracle(base, fts, thr, quota, weights, sparsity, offset)
