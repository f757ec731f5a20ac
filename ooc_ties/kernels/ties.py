"""Pass-2 kernels: trim, elect, disjoint merge, one element at a time, in float32.

Per element ``i`` with base ``b`` and fine-tuned values ``x_t`` (t in the order given), exactly:

1. ``tau_t = x_t - b``; ``keep_t = |tau_t| > thr_t``, or ``|tau_t| == thr_t`` and this is one of the
   first ``quota_t`` such elements of the block (``quota_t < 0``: all of them);
   ``trimmed_t = tau_t * keep_t`` (so a dropped negative value is -0.0, as in the reference code).
2. ``v_t = w_t * trimmed_t``; ``S = ((0 + v_0) + v_1) + ...``.
3. Elected sign positive iff ``S > 0``, or ``S == 0`` and ``zero_positive``.
4. ``agree_t = v_t > 0`` if positive else ``v_t < 0``;
   ``num = ((0 + v_0*agree_0) + v_1*agree_1) + ...``, ``den`` likewise with ``w_t``; ``den == 0 -> 1``.
5. ``out = b + lam * (num / den)``, encoded to the output's storage (see ``convert``).

No fused multiply-add (fastmath is off), no reassociation. docs/numerics.md explains each choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ooc_ties.kernels.convert import decode_oracle, encode_oracle, load_f32, store_f32, stored_finite
from ooc_ties.kernels.jit import helper, kernel

__all__ = ["elect_count", "elect_count_oracle", "merge", "merge_oracle", "trim_oracle"]

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@helper
def _trimmed_votes(
    base: Any,
    fts: Any,
    i: int,
    thr: np.ndarray,
    quota: np.ndarray,
    seen: np.ndarray,
    weights: np.ndarray,
    v: np.ndarray,
) -> Any:
    """Fill ``v`` with the weighted trimmed task values of element ``i``; return ``(b, S)``."""
    b = load_f32(base, i)
    s = _ZERO
    for t in range(len(fts)):
        tau = load_f32(fts[t], i) - b
        a = abs(tau)
        keep = a > thr[t]
        if a == thr[t]:
            keep = quota[t] < 0 or seen[t] < quota[t]
            seen[t] += 1
        trimmed = tau if keep else tau * _ZERO
        v[t] = weights[t] * trimmed
        s = s + v[t]
    return b, s


@kernel
def elect_count(
    base: Any, fts: Any, thr: np.ndarray, quota: np.ndarray, weights: np.ndarray, counts: np.ndarray
) -> None:
    """``counts[0] += #{S > 0}``, ``counts[1] += #{S < 0}`` over the block (for the majority sign)."""
    n_models = len(fts)
    seen = np.zeros(n_models, np.int64)
    v = np.empty(n_models, np.float32)
    pos = 0
    neg = 0
    for i in range(base.size):
        _, s = _trimmed_votes(base, fts, i, thr, quota, seen, weights, v)
        if s > _ZERO:
            pos += 1
        elif s < _ZERO:
            neg += 1
    counts[0] += pos
    counts[1] += neg


@kernel
def merge(
    base: Any,
    fts: Any,
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    lam: np.float32,
    zero_positive: bool,
    out: Any,
) -> int:
    """Merge one block into ``out``; return the first index whose stored result is not finite, or -1."""
    n_models = len(fts)
    seen = np.zeros(n_models, np.int64)
    v = np.empty(n_models, np.float32)
    first_bad = -1
    for i in range(base.size):
        b, s = _trimmed_votes(base, fts, i, thr, quota, seen, weights, v)
        positive = s > _ZERO or (s == _ZERO and zero_positive)
        num = _ZERO
        den = _ZERO
        for t in range(n_models):
            agree = v[t] > _ZERO if positive else v[t] < _ZERO
            if agree:
                num = num + v[t]
                den = den + weights[t]
            else:
                num = num + v[t] * _ZERO
                den = den + weights[t] * _ZERO
        if den == _ZERO:
            den = _ONE
        store_f32(out, i, b + lam * (num / den))
        if first_bad < 0 and not stored_finite(out, i):
            first_bad = i
    return first_bad


# ---------------------------------------------------------------------------------------------------
# NumPy oracles: the same arithmetic, vectorised over the block, float32 throughout.


def trim_oracle(tau: np.ndarray, thr: np.float32, quota: int) -> np.ndarray:
    """``tau * keep`` for one model's block (see the module docstring, step 1)."""
    a = np.abs(tau)
    equal = a == thr
    keep = a > thr
    if quota < 0:
        keep |= equal
    else:
        keep |= equal & (np.cumsum(equal) <= quota)
    trimmed: np.ndarray = tau * keep.astype(np.float32)
    return trimmed


def _votes_oracle(
    base: np.ndarray, fts: tuple[np.ndarray, ...], thr: np.ndarray, quota: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = decode_oracle(base)
    v = np.stack(
        [
            np.float32(weights[t]) * trim_oracle(decode_oracle(ft) - b, np.float32(thr[t]), int(quota[t]))
            for t, ft in enumerate(fts)
        ]
    ).astype(np.float32)
    s = np.zeros(b.shape, np.float32)
    for t in range(len(fts)):
        s = s + v[t]
    return b, v, s


def elect_count_oracle(
    base: np.ndarray, fts: tuple[np.ndarray, ...], thr: np.ndarray, quota: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """NumPy oracle of :func:`elect_count` for fresh counts."""
    _, _, s = _votes_oracle(base, fts, thr, quota, weights)
    return np.array([np.count_nonzero(s > 0), np.count_nonzero(s < 0)], np.int64)


def merge_oracle(
    base: np.ndarray,
    fts: tuple[np.ndarray, ...],
    thr: np.ndarray,
    quota: np.ndarray,
    weights: np.ndarray,
    lam: np.float32,
    zero_positive: bool,
    out_dtype: np.dtype,
) -> np.ndarray:
    """NumPy oracle of :func:`merge`: the encoded output block."""
    b, v, s = _votes_oracle(base, fts, thr, quota, weights)
    positive = (s > 0) | ((s == 0) & zero_positive)
    num = np.zeros(b.shape, np.float32)
    den = np.zeros(b.shape, np.float32)
    for t in range(len(fts)):
        agree = np.where(positive, v[t] > 0, v[t] < 0).astype(np.float32)
        num = num + v[t] * agree
        den = den + np.float32(weights[t]) * agree
    den[den == 0] = 1
    with np.errstate(over="ignore"):
        result = b + np.float32(lam) * (num / den)
    return encode_oracle(result, out_dtype)
