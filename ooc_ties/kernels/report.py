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
from ooc_ties.kernels.jit import kernel
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

    ``thr``, ``quota``, ``weights`` and ``sparsity`` as for :func:`ooc_ties.kernels.ties.merge`."""
    n = base.size
    n_models = len(fts)
    seen = np.zeros(n_models, np.int64)
    seen_hi = np.zeros(n_models, np.int64)
    no_count = np.zeros(0, np.int64)
    b = np.empty(TILE, np.float32)
    s = np.empty(TILE, np.float32)
    v = np.empty((n_models, TILE), np.float32)
    tau = np.empty((n_models, TILE), np.float64)
    nonzero = np.empty(TILE, np.bool_)
    a32 = np.empty(TILE, np.float32)
    bits = a32.view(np.uint32)
    for start in range(0, n, TILE):
        m = min(TILE, n - start)
        _vote_tile(base, fts, start, m, thr, quota, weights, seen, no_count, b, s, v, nonzero, False, sparsity, seen_hi)
        for t in range(n_models):
            ft = fts[t][start : start + m]
            row = tau[t]
            l1 = 0.0
            l2 = 0.0
            for j in range(m):
                x32 = load_f32(ft, j) - b[j]
                a32[j] = abs(x32)
                x = np.float64(x32)
                row[j] = x
                l1 += abs(x)
                l2 += x * x
            for j in range((-(offset + start)) % MAGNITUDE_STRIDE, m, MAGNITUDE_STRIDE):
                magnitudes[t, bits[j] >> 16] += 1
            norms[0, t] += l1
            norms[1, t] += l2
            dots[t, t] += l2
        for i in range(n_models):
            for k in range(i + 1, n_models):
                dot = 0.0
                agree = 0
                ri = tau[i]
                rk = tau[k]
                for j in range(m):
                    dot += ri[j] * rk[j]
                    agree += (int(ri[j] > 0.0) - int(ri[j] < 0.0)) * (int(rk[j] > 0.0) - int(rk[j] < 0.0))
                dots[i, k] += dot
                dots[k, i] += dot
                signs[i, k] += agree
                signs[k, i] += agree
        for t in range(n_models):
            row = tau[t]
            nnz = 0
            for j in range(m):
                nnz += row[j] != 0.0
            signs[t, t] += nnz
        if elected.size:
            for j in range(m):
                elected[start + j] = (s[j] > _ZERO) - (s[j] < _ZERO)
        for j in range(m):
            sj = s[j]
            kept = 0
            pos = False
            neg = False
            for t in range(n_models):
                x = v[t, j]
                if x != _ZERO:
                    kept += 1
                    counts[0, t] += 1
                    norms[2, t] += abs(np.float64(x))
                    pos |= x > _ZERO
                    neg |= x < _ZERO
            kept_hist[kept] += 1
            totals[0] += pos & neg
            if sj != _ZERO:
                for t in range(n_models):
                    x = v[t, j]
                    if x != _ZERO:
                        if (x > _ZERO) == (sj > _ZERO):
                            counts[1, t] += 1
                        else:
                            discarded[0] += abs(np.float64(x))
            elif nonzero[j]:
                totals[1] += 1
                for t in range(n_models):
                    x = v[t, j]
                    if x > _ZERO:
                        counts[2, t] += 1
                        discarded[2] += np.float64(x)
                    elif x < _ZERO:
                        counts[3, t] += 1
                        discarded[1] += -np.float64(x)
            else:
                totals[2] += 1


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
