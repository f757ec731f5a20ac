"""Exact L1 norms of task vectors: per float32 exponent, integer sums of significands.

mergekit rescales each tensor's kept task values so that their L1 norm is the whole task vector's
(``rescale``), from two float32 sums that torch computes in an order of its own. ooc-ties sums
``|tau|`` exactly instead: every finite float32 magnitude is ``s * 2**(max(e, 1) - 150)`` with ``e``
its 8-bit biased exponent and ``s`` its 24-bit significand (the implicit bit included for ``e > 0``),
so adding ``s`` into an int64 counter per ``e`` loses nothing, and counters of blocks add in any order.
:func:`exact_sum` turns the counters into the correctly rounded float32 of the exact sum. So the norms,
and the output, are the same bytes for any block size and thread count. (A counter overflows only after
``2**39`` values of one exponent: 550 billion, more than any tensor has.)

Exponent 255 (inf, NaN) is counted in its own counter: any value there makes the sum inf (the engine
refuses non-finite inputs before it gets here).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from ooc_ties.kernels.convert import decode_oracle, load_f32
from ooc_ties.kernels.jit import f32_as_u32, kernel

__all__ = ["EXPONENTS", "exact_sum", "l1_counts", "l1_counts_oracle"]

EXPONENTS = 256
"""Counters per sum: one per biased float32 exponent."""

_ZERO = np.float32(0.0)


@kernel
def l1_counts(base: Any, ft: Any, with_base: bool, keep: np.ndarray, whole: np.ndarray, kept: np.ndarray) -> None:
    """Add ``|tau|`` (``tau = ft - base`` in float32, or ``ft`` without a base) of every element to
    ``whole`` and of the elements with ``keep[i] != 0`` to ``kept``, as exponent counters (int64,
    :data:`EXPONENTS` each)."""
    for i in range(ft.size):
        b = load_f32(base, i) if with_base else _ZERO
        bits = f32_as_u32(abs(load_f32(ft, i) - b))
        e = bits >> np.uint32(23)
        significand = np.int64((bits & np.uint32(0x7FFFFF)) | (np.uint32(e > 0) << np.uint32(23)))
        whole[e] += significand
        kept[e] += significand if keep[i] != 0 else 0


def exact_sum(counts: np.ndarray) -> np.float32:
    """The float32 nearest the exact sum the counters hold (ties to even; inf past float32's range)."""
    if counts[EXPONENTS - 1]:
        return np.float32(np.inf)
    total = sum(int(c) << max(e - 1, 0) for e, c in enumerate(counts[: EXPONENTS - 1].tolist()) if c)
    # total is in units of 2**-149; round it to 24 significant bits, nearest even
    shift = max(total.bit_length() - 24, 0)
    q, r = divmod(total, 1 << shift)
    half = 1 << shift >> 1
    if shift and (r > half or (r == half and q & 1)):
        q += 1
    with np.errstate(over="ignore"):
        return np.float32(float(q) * 2.0 ** (shift - 149)) if shift - 149 < 1000 else np.float32(np.inf)


def l1_counts_oracle(base: np.ndarray, ft: np.ndarray, with_base: bool, keep: np.ndarray) -> tuple[float, float]:
    """The exact L1 norms (whole, kept) as Python floats, summed in exact rational arithmetic."""
    b = decode_oracle(base) if with_base else np.zeros(ft.shape, np.float32)
    tau = np.abs(decode_oracle(ft) - b).astype(np.float64)
    whole = sum((Fraction(x) for x in tau.tolist()), Fraction(0))
    kept = sum((Fraction(x) for x, k in zip(tau.tolist(), keep.tolist(), strict=True) if k), Fraction(0))
    return float(whole), float(kept)
