"""The interference kernel: what a merge does to one block, counted beside it (``--report``).

For every element, with the task values ``tau_t`` and the values the method keeps ``v_t`` (``trimmed_t``
of :mod:`ooc_ties.kernels.ties`, step 1, by the same code), and ``S`` the elected sign's sum (step 2):

* the task vectors: ``sum |tau_t|``, ``sum tau_t**2``, ``sum tau_i * tau_j`` (float64) and
  ``sum sign(tau_i) * sign(tau_j)`` (an integer; its diagonal counts the non-zero values);
* the trim: how many values each model keeps and their ``sum |v_t|``; how many models keep each element
  (a histogram ``0..n``); the elements whose kept values have both signs (*conflicts*);
* the vote: where ``S != 0``, each model's kept values that agree with the elected sign (its *wins*)
  and the ``|v_t|`` of those that do not (what the disjoint mean *discards*); where ``S == 0`` with
  some kept value (an *open* element, whose sign is the majority sign, known only after pass 2), the
  same under either sign, kept apart; where nothing is kept, a count.

Every count is an integer, so it is exact whatever the blocks; the float64 sums are added in element
order within a block and the blocks' sums in block order (docs/report.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ooc_ties.kernels.convert import decode_oracle, load_f32
from ooc_ties.kernels.jit import helper, kernel
from ooc_ties.kernels.ties import TILE, _sparsified_oracle, _vote_tile, _votes_oracle

__all__ = [
    "INTERFERENCE_OUTPUTS",
    "MAGNITUDE_STRIDE",
    "interference",
    "interference_oracle",
    "interference_outputs",
    "magnitude_histogram",
]

_ZERO = np.float32(0.0)

MAGNITUDE_STRIDE = 8
"""The magnitude histograms count every 8th element of each tensor (by its index in the tensor, so the
same elements whatever the blocks): the report's density curves."""

INTERFERENCE_OUTPUTS = ("norms", "dots", "signs", "counts", "kept_hist", "totals", "discarded")
"""The arrays :func:`interference` adds into, in order (shapes: :func:`interference_outputs`)."""


def interference_outputs(n: int) -> tuple[np.ndarray, ...]:
    """Fresh (zero) outputs of :func:`interference` for ``n`` models:

    * ``norms`` float64 ``(3, n)``: ``sum |tau|``, ``sum tau**2``, ``sum |v|`` (the kept values);
    * ``dots`` float64 ``(n, n)``: ``sum tau_i * tau_j``;
    * ``signs`` int64 ``(n, n)``: ``sum sign(tau_i) * sign(tau_j)``;
    * ``counts`` int64 ``(4, n)``: values kept, wins, wins at open elements under +, under -;
    * ``kept_hist`` int64 ``(n + 1,)``: elements by how many models keep them;
    * ``totals`` int64 ``(3,)``: conflicts, open elements, elements where nothing is kept;
    * ``discarded`` float64 ``(3,)``: ``sum |v|`` discarded where ``S != 0``, at open elements under +,
      under -.
    """
    return (
        np.zeros((3, n), np.float64),
        np.zeros((n, n), np.float64),
        np.zeros((n, n), np.int64),
        np.zeros((4, n), np.int64),
        np.zeros(n + 1, np.int64),
        np.zeros(3, np.int64),
        np.zeros(3, np.float64),
    )


@helper
def _sum8(x: np.ndarray, m: int) -> float:
    """``sum(x[:m])`` (float64) with eight partial sums, so that the loop vectorises (a single running
    sum waits four cycles per addition); the partial sums are added in a fixed order."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    full = m - m % 8
    for j in range(0, full, 8):
        a0 += x[j]
        a1 += x[j + 1]
        a2 += x[j + 2]
        a3 += x[j + 3]
        a4 += x[j + 4]
        a5 += x[j + 5]
        a6 += x[j + 6]
        a7 += x[j + 7]
    for j in range(full, m):
        a0 += x[j]
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


@kernel
def interference(
    base: Any,
    fts: Any,
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    sparsity: Any,
    offset: int,
    magnitudes: np.ndarray,
    elected: np.ndarray,
    norms: np.ndarray,
    dots: np.ndarray,
    signs: np.ndarray,
    counts: np.ndarray,
    kept_hist: np.ndarray,
    totals: np.ndarray,
    discarded: np.ndarray,
) -> None:
    """Add one block's interference statistics (module docstring) into the outputs, and into
    ``magnitudes[t, bits(|tau_t|) >> 16]`` one count for every element whose index in its tensor
    (``offset`` is the block's first) is a multiple of :data:`MAGNITUDE_STRIDE`. Unless ``elected`` is
    empty, ``elected[i]`` receives the sign of ``S`` (int8: +1, -1, or 0 for an exact zero vote).

    ``thr``, ``quota``, ``weights`` and ``sparsity`` as for :func:`ooc_ties.kernels.ties.merge`.

    Each float64 sum runs on eight partial sums (:func:`_sum8`) and the loops over a tile's elements
    avoid branches, so that they can vectorise: 24.3 -> 11.7 ns per element for three models on one
    core (a 4 Mi-element block from memory), against 2.7-2.9 ns for the merge kernel itself. By parts:
    the vote (``_vote_tile``) 1.7 ns, the task values' norms and magnitudes 2.4, the pairs 1.2, the kept
    values' figures 6.5 (measured by removing each part)."""
    n = base.size
    n_models = len(fts)
    seen = np.zeros(n_models, np.int64)
    seen_hi = np.zeros(n_models, np.int64)
    no_count = np.zeros(0, np.int64)
    b = np.empty(TILE, np.float32)
    s = np.empty(TILE, np.float32)
    v = np.empty((n_models, TILE), np.float32)
    tau = np.empty((n_models, TILE), np.float32)
    f64 = np.empty(TILE, np.float64)
    sq = np.empty(TILE, np.float64)
    nonzero = np.empty(TILE, np.bool_)
    kept_by = np.empty(TILE, np.int32)
    pos = np.empty(TILE, np.bool_)
    neg = np.empty(TILE, np.bool_)
    decided = np.empty(TILE, np.bool_)
    upward = np.empty(TILE, np.bool_)
    open_ = np.empty(TILE, np.bool_)
    lost = np.empty(TILE, np.float64)
    lost_up = np.empty(TILE, np.float64)
    lost_down = np.empty(TILE, np.float64)
    bits = np.empty(TILE, np.float32).view(np.uint32)
    for start in range(0, n, TILE):
        m = min(TILE, n - start)
        _vote_tile(base, fts, start, m, thr, quota, weights, seen, no_count, b, s, v, nonzero, False, sparsity, seen_hi)
        first = (-(offset + start)) % MAGNITUDE_STRIDE
        for t in range(n_models):
            ft = fts[t][start : start + m]
            x = tau[t]
            nnz = np.int64(0)
            for j in range(m):  # one sweep: the task value, its magnitude and square (float64)
                xj = load_f32(ft, j) - b[j]
                x[j] = xj
                y = np.float64(xj)
                f64[j] = abs(y)
                sq[j] = y * y
                nnz += np.int64(xj != _ZERO)
            norms[0, t] += _sum8(f64, m)
            l2 = _sum8(sq, m)
            norms[1, t] += l2
            dots[t, t] += l2
            signs[t, t] += nnz
            xb = x.view(np.uint32)
            for j in range(first, m, MAGNITUDE_STRIDE):
                bits[0] = xb[j] & np.uint32(0x7FFFFFFF)
                magnitudes[t, bits[0] >> 16] += 1
        for i in range(n_models):
            for k in range(i + 1, n_models):
                xi = tau[i]
                xk = tau[k]
                agree = np.int64(0)
                for j in range(m):
                    f64[j] = np.float64(xi[j]) * np.float64(xk[j])
                    agree += (np.int64(xi[j] > _ZERO) - np.int64(xi[j] < _ZERO)) * (
                        np.int64(xk[j] > _ZERO) - np.int64(xk[j] < _ZERO)
                    )
                dot = _sum8(f64, m)
                dots[i, k] += dot
                dots[k, i] += dot
                signs[i, k] += agree
                signs[k, i] += agree
        if elected.size:
            for j in range(m):
                elected[start + j] = np.int8(s[j] > _ZERO) - np.int8(s[j] < _ZERO)
        conflicts = np.int64(0)
        opened = np.int64(0)
        nothing = np.int64(0)
        for j in range(m):
            sj = s[j]
            decided[j] = sj != _ZERO
            upward[j] = sj > _ZERO
            open_[j] = (sj == _ZERO) & nonzero[j]
            opened += np.int64(open_[j])
            nothing += np.int64((sj == _ZERO) & ~nonzero[j])
            kept_by[j] = 0
            pos[j] = False
            neg[j] = False
            lost[j] = 0.0
            lost_up[j] = 0.0
            lost_down[j] = 0.0
        for t in range(n_models):
            vt = v[t]
            kept = np.int64(0)
            wins = np.int64(0)
            wins_pos = np.int64(0)
            wins_neg = np.int64(0)
            for j in range(m):
                x = vt[j]
                up = x > _ZERO
                down = x < _ZERO
                a = abs(np.float64(x))
                f64[j] = a
                kept_by[j] += np.int32(up | down)
                pos[j] |= up
                neg[j] |= down
                kept += np.int64(up | down)
                agree = (up & upward[j]) | (down & ~upward[j])
                wins += np.int64(agree & decided[j])
                wins_pos += np.int64(up & open_[j])
                wins_neg += np.int64(down & open_[j])
                lost[j] += a if (up | down) & decided[j] & ~agree else 0.0
                lost_up[j] += a if down & open_[j] else 0.0  # (under +, the negative values go)
                lost_down[j] += a if up & open_[j] else 0.0
            counts[0, t] += kept
            counts[1, t] += wins
            counts[2, t] += wins_pos
            counts[3, t] += wins_neg
            norms[2, t] += _sum8(f64, m)
        discarded[0] += _sum8(lost, m)
        discarded[1] += _sum8(lost_up, m)
        discarded[2] += _sum8(lost_down, m)
        for j in range(m):
            conflicts += np.int64(pos[j] & neg[j])
        totals[0] += conflicts
        totals[1] += opened
        totals[2] += nothing
        for k in range(n_models + 1):
            count = 0
            for j in range(m):
                count += kept_by[j] == k
            kept_hist[k] += count


def interference_oracle(
    base: np.ndarray,
    fts: tuple[np.ndarray, ...],
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    sparsity: Any = None,
    offset: int = 0,
) -> tuple[np.ndarray, ...]:
    """NumPy oracle of :func:`interference` for fresh outputs, the magnitude histograms and the elected
    signs first (the sums in NumPy's own order: equal within float64 rounding; every count equal)."""
    n = len(fts)
    b, weighted, s = _votes_oracle(base, fts, thr, quota, weights, sparsity)
    # the kept values themselves (``_votes_oracle`` gives them weighted)
    v = np.stack([_sparsified_oracle(b, fts, thr, quota, sparsity, t) for t in range(n)])
    tau = np.stack([(decode_oracle(ft) - b).astype(np.float64) for ft in fts])
    norms, dots, signs, counts, kept_hist, totals, discarded = interference_outputs(n)
    norms[0] = np.abs(tau).sum(axis=1)
    norms[1] = (tau * tau).sum(axis=1)
    norms[2] = np.abs(v.astype(np.float64)).sum(axis=1)
    dots[:] = tau @ tau.T
    sg = np.sign(tau).astype(np.int64)
    signs[:] = sg @ sg.T
    keptv = v != 0
    counts[0] = keptv.sum(axis=1)
    k = keptv.sum(axis=0)
    kept_hist[:] = np.bincount(k, minlength=n + 1)
    totals[0] = np.count_nonzero((v > 0).any(axis=0) & (v < 0).any(axis=0))
    decided = s != 0
    agree = keptv & ((v > 0) == (s > 0)) & decided
    counts[1] = agree.sum(axis=1)
    discarded[0] = np.abs(v.astype(np.float64))[keptv & ~agree & decided].sum()
    open_ = (s == 0) & (weighted != 0).any(axis=0)
    counts[2] = ((v > 0) & open_).sum(axis=1)
    counts[3] = ((v < 0) & open_).sum(axis=1)
    discarded[1] = -v.astype(np.float64)[(v < 0) & open_].sum()
    discarded[2] = v.astype(np.float64)[(v > 0) & open_].sum()
    totals[1] = np.count_nonzero(open_)
    totals[2] = np.count_nonzero((s == 0) & ~open_)
    magnitudes = magnitude_histogram(n)
    picked = (offset + np.arange(b.size)) % MAGNITUDE_STRIDE == 0
    for t in range(n):
        patterns = np.abs(decode_oracle(fts[t]) - b)[picked].view(np.uint32) >> 16
        magnitudes[t] = np.bincount(patterns, minlength=magnitudes.shape[1])
    elected = np.sign(s).astype(np.int8)
    return magnitudes, elected, norms, dots, signs, counts, kept_hist, totals, discarded


def magnitude_histogram(n: int) -> np.ndarray:
    """A fresh ``magnitudes`` output of :func:`interference` for ``n`` models: ``(n, 65536)`` int64."""
    return np.zeros((n, 1 << 16), np.int64)
