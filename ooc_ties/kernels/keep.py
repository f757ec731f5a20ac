"""Step 1 of the merge (:mod:`ooc_ties.kernels.ties`): which task values each model keeps.

``keep_t = |tau_t| > thr_t``, or ``|tau_t| == thr_t`` and this is one of the first ``quota_t`` such
elements of the block (``quota_t < 0``: all of them); ``trimmed_t = tau_t * keep_t``. Under the general
rule (the methods other than TIES and task arithmetic), a value must also stay out of the band's upper
cut and pass the drop mask, and the kept values are multiplied by the rescale factor. The tile helpers
here are what ``ties._vote_tile`` runs for every model; :func:`keep_flags` gives pass 1 the same
decision as flags; the oracles are the same rule in NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ooc_ties.kernels.convert import decode_oracle, load_f32
from ooc_ties.kernels.jit import helper, kernel

__all__ = ["keep_flags", "keep_flags_oracle", "kept_oracle", "sparsify_oracle", "trim_oracle"]

_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)


@helper
def _trim_tile(
    ft: Any, b: np.ndarray, m: int, thr: np.float32, quota: int, seen: int, out: np.ndarray, count: bool
) -> tuple[int, int]:
    """``out[:m]`` = trimmed task values of one model for the tile ``ft`` (``m`` elements, a slice of
    the block); returns ``seen`` and how many values the tile kept (0 unless ``count``, when every tie
    is kept).

    ``seen`` counts the values equal to ``thr`` met so far in the block (only used when ``quota >= 0``).
    Counting the kept values costs 0.3 ns per parameter of a 3-model merge (2.43 -> 2.81 ns on a
    4 Mi-element bf16 block, whichever way it is counted: int16/int32/int64 sums, nonzeros of ``out``
    afterwards, or inside the disjoint-mean sweep), about 10% of a warm-cache 1B merge: so only the
    blocks of pass 1's sample are counted (see ``ooc_ties.pass2``).
    """
    kept = np.int32(0)  # m <= TILE fits
    if quota < 0:  # every tie kept: a branch-free loop the compiler vectorises
        if not count:
            for j in range(m):
                tau = load_f32(ft, j) - b[j]
                out[j] = tau if abs(tau) >= thr else tau * _ZERO
            return seen, 0
        for j in range(m):
            tau = load_f32(ft, j) - b[j]
            keep = abs(tau) >= thr
            out[j] = tau if keep else tau * _ZERO
            kept += np.int32(keep)
        return seen, int(kept)
    ties = 0
    for j in range(m):
        ties += abs(load_f32(ft, j) - b[j]) == thr
    if seen + ties <= quota:  # every tie of this tile is within the quota
        for j in range(m):
            tau = load_f32(ft, j) - b[j]
            keep = abs(tau) >= thr
            out[j] = tau if keep else tau * _ZERO
            kept += np.int32(keep)
    elif seen >= quota:  # the quota is used up: no tie kept
        for j in range(m):
            tau = load_f32(ft, j) - b[j]
            keep = abs(tau) > thr
            out[j] = tau if keep else tau * _ZERO
            kept += np.int32(keep)
    else:  # the one tile where the quota runs out: keep ties in order until it does
        used = seen
        for j in range(m):
            tau = load_f32(ft, j) - b[j]
            a = abs(tau)
            keep = a > thr
            if a == thr:
                keep = used < quota
                used += 1
            out[j] = tau if keep else tau * _ZERO
            kept += np.int32(keep)
    return seen + ties, int(kept)


@helper
def _in_band(
    a: Any, thr: Any, quota: int, seen: int, thr_hi: Any, quota_hi: int, seen_hi: int
) -> tuple[bool, int, int]:
    """Whether a magnitude ``a`` is kept by the trim (above ``thr``, or equal and one of the first
    ``quota`` such values; ``quota < 0``: all) and not dropped by the band's upper cut (the same with
    ``thr_hi``/``quota_hi``); ``seen``/``seen_hi`` count the values met equal to each cut."""
    keep = a > thr
    if a == thr:
        keep = quota < 0 or seen < quota
        seen += 1
    top = a > thr_hi
    if a == thr_hi:
        top = quota_hi < 0 or seen_hi < quota_hi
        seen_hi += 1
    return keep and not top, seen, seen_hi


@helper
def _sparsify_tile(
    ft: Any,
    b: np.ndarray,
    m: int,
    thr: np.float32,
    quota: int,
    seen: int,
    thr_hi: np.float32,
    quota_hi: int,
    seen_hi: int,
    mask: np.ndarray,
    scale: np.float32,
    out: np.ndarray,
) -> tuple[int, int, int]:
    """``out[:m]`` = sparsified task values of one model for the tile ``ft`` under the general rule
    (step 1 with a band, a drop mask and a rescale factor; see the module docstring); returns ``seen``,
    ``seen_hi`` and how many values the tile kept.

    ``thr_hi``/``quota_hi``: the band's upper cut, the values that are *dropped* for being among the
    largest (``thr_hi = +inf`` with ``quota_hi = 0``: none); ``mask``: the tile's slice of the model's
    drop mask (empty: none); ``scale``: the rescale factor (1: none, an exact no-op).

    Without a tie quota or a band (linear, DARE, DELLA, a rescaled trim that splits no tie) the loops
    are branch-free and vectorise: on a 4 Mi-element bf16 block of three models, 11.1 -> 2.6 ns per
    parameter for linear and 16.7 -> 3.2 for a masked, rescaled merge (the fast path of TIES and task
    arithmetic: 2.1-2.3), measured in one session."""
    kept = np.int32(0)
    masked = mask.size > 0
    if quota < 0 and thr_hi == _INF and quota_hi == 0:  # no tie quota, no band: branch-free loops
        if masked:
            for j in range(m):
                tau = load_f32(ft, j) - b[j]
                keep = (abs(tau) >= thr) & (mask[j] != 0)
                out[j] = (tau if keep else tau * _ZERO) * scale
                kept += np.int32(keep)
        else:
            for j in range(m):
                tau = load_f32(ft, j) - b[j]
                keep = abs(tau) >= thr
                out[j] = (tau if keep else tau * _ZERO) * scale
                kept += np.int32(keep)
        return seen, seen_hi, int(kept)
    for j in range(m):
        tau = load_f32(ft, j) - b[j]
        keep, seen, seen_hi = _in_band(abs(tau), thr, quota, seen, thr_hi, quota_hi, seen_hi)
        if masked:
            keep = keep and mask[j] != 0
        out[j] = (tau if keep else tau * _ZERO) * scale
        kept += np.int32(keep)
    return seen, seen_hi, int(kept)


@kernel
def keep_flags(
    base: Any,
    ft: Any,
    with_base: bool,
    thr: np.float32,
    quota: int,
    thr_hi: np.float32,
    quota_hi: int,
    keep: np.ndarray,
) -> int:
    """``keep[i]`` = whether step 1 keeps element ``i`` of one model's block under the trim (``thr``,
    ``quota``) less the band's upper cut (``thr_hi``, ``quota_hi``; ``+inf`` and 0 for none), exactly as
    :func:`~ooc_ties.kernels.ties.merge` decides it; returns how many are kept. (Pass 1 counts the L1
    norm of the kept values with it, for mergekit's rescale of a magnitude trim.)"""
    seen = 0
    seen_hi = 0
    kept = 0
    for i in range(ft.size):
        b = load_f32(base, i) if with_base else _ZERO
        k, seen, seen_hi = _in_band(abs(load_f32(ft, i) - b), thr, quota, seen, thr_hi, quota_hi, seen_hi)
        keep[i] = k
        kept += k
    return kept


# ---------------------------------------------------------------------------------------------------
# NumPy oracles: the same rule, vectorised over the block, float32 throughout.


def _keep_oracle(tau: np.ndarray, thr: np.float32, quota: int) -> np.ndarray:
    """``keep`` of one model's block (the module docstring)."""
    a = np.abs(tau)
    equal = a == thr
    keep: np.ndarray = a > thr
    if quota < 0:
        keep |= equal
    else:
        keep |= equal & (np.cumsum(equal) <= quota)
    return keep


def sparsify_oracle(
    tau: np.ndarray,
    thr: np.float32,
    quota: int,
    thr_hi: np.float32 | None = None,
    quota_hi: int = 0,
    mask: np.ndarray | None = None,
    scale: np.float32 | None = None,
) -> np.ndarray:
    """The general rule of step 1 for one model's block: keep, minus the band's upper cut, times the
    drop mask, then the rescale factor."""
    keep = _keep_oracle(tau, thr, quota)
    if thr_hi is not None:
        keep &= ~_keep_oracle(tau, np.float32(thr_hi), quota_hi)
    if mask is not None and mask.size:
        keep &= mask != 0
    trimmed: np.ndarray = tau * keep.astype(np.float32)
    if scale is not None:
        trimmed = trimmed * np.float32(scale)
    return trimmed


def keep_flags_oracle(
    base: np.ndarray, ft: np.ndarray, with_base: bool, thr: np.float32, quota: int, thr_hi: np.float32, quota_hi: int
) -> np.ndarray:
    """NumPy oracle of :func:`keep_flags` (bool)."""
    b = decode_oracle(base) if with_base else np.zeros(ft.shape, np.float32)
    tau = decode_oracle(ft) - b
    keep: np.ndarray = _keep_oracle(tau, np.float32(thr), quota) & ~_keep_oracle(tau, np.float32(thr_hi), quota_hi)
    return keep


def trim_oracle(tau: np.ndarray, thr: np.float32, quota: int) -> np.ndarray:
    """``tau * keep`` for one model's block (the module docstring)."""
    trimmed: np.ndarray = tau * _keep_oracle(tau, thr, quota).astype(np.float32)
    return trimmed


def kept_oracle(base: np.ndarray, fts: tuple[np.ndarray, ...], thr: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """NumPy oracle of :func:`~ooc_ties.kernels.ties.merge`'s ``kept`` counts for a fresh array."""
    b = decode_oracle(base)
    return np.array(
        [
            np.count_nonzero(_keep_oracle(decode_oracle(ft) - b, np.float32(thr[t]), int(quota[t])))
            for t, ft in enumerate(fts)
        ],
        np.int64,
    )


def _sparsified_oracle(
    b: np.ndarray, fts: tuple[np.ndarray, ...], thr: np.ndarray, quota: np.ndarray, sparsity: Any, t: int
) -> np.ndarray:
    tau = decode_oracle(fts[t]) - b
    if sparsity is None:
        return trim_oracle(tau, np.float32(thr[t]), int(quota[t]))
    thr_hi, quota_hi, masks, scales, _, _ = sparsity
    band = len(thr_hi) > 0
    return sparsify_oracle(
        tau,
        np.float32(thr[t]),
        int(quota[t]),
        np.float32(thr_hi[t]) if band else None,
        int(quota_hi[t]) if band else 0,
        masks[t] if masks.shape[1] else None,
        np.float32(scales[t]) if len(scales) else None,
    )
