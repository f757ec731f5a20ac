"""Random-drop masks for DARE and DELLA: a counter-based generator, the per-element keep tests, oracles.

mergekit (0.1.5, ``mergekit/sparsify.py``) draws its masks with ``torch.bernoulli`` from torch's global
generator, in execution order: a mask depends on everything merged before it. Here a mask is a pure
function of (seed, model index, tensor name, element index), so it is the same bytes for any block
size, tile size, thread count or machine, and pass 1 and pass 2 can both recompute it.

Generator (all arithmetic on uint64, wrapping modulo 2**64; ``^`` is xor, ``>>`` a logical shift):

* ``mix64(z)``: SplitMix64's finaliser (Stafford's variant 13)::

      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
      z = (z ^ (z >> 27)) * 0x94D049BB133111EB
      mix64(z) = z ^ (z >> 31)

* ``tensor_key(name)``: the first 8 bytes of ``sha256(name.encode("utf-8"))``, little-endian.
* ``stream_key(seed, model, tensor_key)``, with ``G = 0x9E3779B97F4A7C15`` (SplitMix64's increment,
  2**64 / golden ratio) and ``seed``, ``model`` taken modulo 2**64::

      s = mix64(seed + G)
      s = mix64(s ^ (model + G))
      stream_key = mix64(s ^ tensor_key)

  Each step is a bijection of the word it absorbs, so two seeds (or two models under one seed, or two
  tensor keys under one seed and model) never share a key.
* ``bits(key, i) = mix64(key + (i + 1) * G)`` for the flat (C-order) index ``i`` of an element in its
  tensor: exactly output ``i + 1`` of a SplitMix64 generator seeded with ``key`` (so ``bits(0, 0)`` is
  that generator's well-known first output 0xE220A8397B1DCDAF). SplitMix64 passes BigCrush.
* ``u(key, i) = bits(key, i) >> 40``: a uniform integer in [0, 2**24).
* An element is kept with probability ``p`` iff ``u < p * 2**24``, compared in float64 (exact: 2**24 is
  a power of two and ``u`` has 24 bits). So ``p <= 0`` (or NaN) keeps nothing, ``p >= 1`` everything,
  and ``p = k / 2**24`` keeps exactly the ``u`` in [0, k).

DARE (``random``, mergekit's ``bernoulli``): keep each task-vector element with ``p = density``; mergekit's
working dtype is float32 for float16 and float32 task vectors on the CPU, so pass
``dare_probability(density)`` = ``float32(density)``.

DELLA (``della_magprune``): each row (the last axis; a 1-D tensor is one row) ranks ``|tau|`` ascending,
rank 1 the smallest; equal magnitudes rank by lowest index first (a stable sort; mergekit's
``argsort(argsort)`` leaves their order unspecified). Magnitudes compare as ``|x|``: the sign bit is
ignored, and NaN ranks after +inf, NaNs by index. Then, in float32, with ``r0 = rank - 1``, ``n`` the row
length and the operations in mergekit's order (torch rounds the Python scalars to float32)::

    rank     = float32(r0) + 1
    top      = float32(n - 1) + 1                      # mergekit's max_ranks; min_ranks is 1
    rank_norm = clamp((rank - 1) / (top - 1), 0, 1)    # n == 1: 0 / 0 in mergekit; here 1/2
    p = float32(density - epsilon) + (rank_norm * 2) * float32(epsilon)

(``density - epsilon`` is a float64 subtraction, as in Python.) The keep test is the one above. A row
of one element has no ranking: mergekit computes NaN and torch.bernoulli raises; here
``rank_norm = 1/2``, the mean of ``rank_norm`` over any longer row, so its keep probability is about
``density`` like every other row's. As in mergekit, ``density >= 1`` keeps every element and
``density <= 0`` none; between the two, ``density - epsilon`` and ``density + epsilon`` must lie in
(0, 1) (:func:`parse_della_epsilon`).

mergekit keeps a bf16 task vector in bf16 (its ``tensor - base`` is bf16 for bf16 models): DARE's
probability is then ``bf16(density)`` (0.3 becomes 0.30078125), and DELLA rounds the ranks (4096
ranks of a row take 704 values) and each step of ``p`` to bf16 (``p`` off by up to about 0.005 from
the float32 value). ooc-ties computes ``p`` in float32 for every input dtype.

The kernels are ``@helper``s on a tile or a block of whole rows, with small ``@kernel`` wrappers; the
NumPy oracles (``*_oracle``) restate the formulas above, vectorised, and share only the constants and
:func:`tensor_key` with them.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from ooc_ties.errors import OptionError
from ooc_ties.kernels.convert import decode_oracle, load_f32
from ooc_ties.kernels.jit import f32_as_u32, helper, kernel

__all__ = [
    "GOLDEN",
    "bits_oracle",
    "dare_probability",
    "della_keep",
    "della_keep_block",
    "della_keep_oracle",
    "della_keep_task",
    "della_probability_oracle",
    "element_bits",
    "parse_della_epsilon",
    "random_keep",
    "random_keep_oracle",
    "random_keep_tile",
    "rank_rows",
    "row_ranks",
    "row_ranks_oracle",
    "stream_key",
    "tensor_key",
]

GOLDEN = 0x9E3779B97F4A7C15
"""SplitMix64's increment, ``G`` in the module docstring."""
MIX_1 = 0xBF58476D1CE4E5B9
"""First multiplier of ``mix64``, the finaliser."""
MIX_2 = 0x94D049BB133111EB
"""Second multiplier of the finaliser."""
U_BITS = 24
"""Bits of the uniform integer ``u``: the top ``U_BITS`` of ``bits(key, i)``."""

_MASK64 = (1 << 64) - 1
_G = np.uint64(GOLDEN)
_M1 = np.uint64(MIX_1)
_M2 = np.uint64(MIX_2)
_SHIFT_U = np.uint64(64 - U_BITS)
_SCALE_U = float(1 << U_BITS)
_SCALE_U32 = np.float32(1 << U_BITS)
_ZERO32 = np.float32(0.0)
_HALF32 = np.float32(0.5)
_ONE32 = np.float32(1.0)
_TWO32 = np.float32(2.0)
_MAG_MASK = np.uint32(0x7FFFFFFF)
_NAN_KEY = np.uint32(0x7F800001)  # every NaN's sort key: just above +inf
_MAX_COLS = (1 << 31) - 1  # ranks are int32

# ---------------------------------------------------------------------------------------------------
# Keys: plain Python, computed once per tensor and model.


def _mix64_int(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * MIX_1) & _MASK64
    z = ((z ^ (z >> 27)) * MIX_2) & _MASK64
    return z ^ (z >> 31)


def tensor_key(name: str) -> int:
    """The first 8 bytes of ``sha256(name)`` (UTF-8) as a little-endian unsigned 64-bit integer."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def stream_key(seed: int, model: int, tensor_key: int) -> int:
    """The key of one model's stream for one tensor (see the module docstring); an int in [0, 2**64).

    Kernels take it as ``np.uint64(stream_key(...))``."""
    s = _mix64_int(seed + GOLDEN)
    s = _mix64_int(s ^ ((model + GOLDEN) & _MASK64))
    return _mix64_int(s ^ (tensor_key & _MASK64))


def dare_probability(density: float) -> float:
    """DARE's keep probability as mergekit uses it: ``density`` rounded to float32, its working dtype
    for float16 and float32 task vectors on the CPU."""
    return float(np.float32(density))


def parse_della_epsilon(density: float, epsilon: float) -> float:
    """Return ``epsilon`` if DELLA accepts it with ``density``, else raise :class:`OptionError`.

    As in mergekit, ``density >= 1`` (keep all) and ``density <= 0`` (keep none) accept any epsilon.
    Otherwise ``density - epsilon`` and ``density + epsilon`` (float64) must both lie in (0, 1), so that
    every keep probability does; NaN fails. For ``epsilon >= 0`` this is mergekit's test; mergekit
    tests only ``density - epsilon > 0`` and ``density + epsilon < 1``, which a negative epsilon always
    passes, and torch.bernoulli then raises if a probability leaves [0, 1]."""
    if density >= 1 or density <= 0:
        return epsilon
    if not (0 < density - epsilon < 1 and 0 < density + epsilon < 1):
        raise OptionError(
            f"DELLA needs density - epsilon and density + epsilon inside (0, 1); "
            f"got density {density!r} and epsilon {epsilon!r}, which give {density - epsilon!r} and "
            f"{density + epsilon!r}"
        )
    return epsilon


# ---------------------------------------------------------------------------------------------------
# Kernels.
#
# Measured on one core of the shared 2-core Xeon VM (AVX-512), a 4 Mi-element block, best of 5-9 runs,
# the range over three sessions (/tmp/drop_scratch_timing.py, not kept):
# * random_keep_tile: 0.56-0.61 ns per element, whole block or 2048-element tiles alike. The loop has
#   no branch and vectorises (256-bit lanes, AVX-512DQ's 64-bit multiply); without AVX-512 LLVM builds
#   the 64-bit multiplies from 32-bit ones (not measured).
# * della_keep_block, ns per element by row length, float32 / bf16 magnitudes: 4096 columns 5.8-7.1 /
#   4.7-5.6; 14336 columns 6.6-7.2 / 5.9-6.2; 128 columns 8.2-8.4 / 5.6-5.9. The ranks are nearly all
#   of it (the keep loop is the random keep plus a float32 division); Numba's
#   ``np.argsort(kind="mergesort")`` per row instead cost 66-87 ns per element.


@helper
def _mix64(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@helper
def element_bits(key: Any, i: int) -> np.uint64:
    """``bits(key, i)`` of the module docstring (``key`` a uint64, ``i`` a flat index >= 0)."""
    return _mix64(np.uint64(key) + np.uint64(i + 1) * _G)


@helper
def _threshold(p: float) -> np.uint64:
    """The integer ``t`` with ``u < t`` iff ``u < p * 2**24`` for every integer ``u`` in [0, 2**24)."""
    x = np.float64(p) * _SCALE_U
    if not x > 0.0:  # also NaN
        return np.uint64(0)
    if x >= _SCALE_U:
        return np.uint64(1 << U_BITS)
    return np.uint64(math.ceil(x))


@helper
def random_keep_tile(key: Any, start: int, m: int, p: float, keep: np.ndarray) -> int:
    """``keep[:m]`` = DARE's keep test with probability ``p`` for elements ``start .. start + m - 1`` of
    the tensor whose stream key is ``key`` (uint64); returns how many were kept.

    ``keep`` is a bool or uint8 array (a slice of the block's mask). The element loop is branch-free."""
    k = np.uint64(key)
    t = _threshold(p)
    base = np.uint64(start + 1)
    kept = np.int64(0)
    for j in range(m):
        u = _mix64(k + (base + np.uint64(j)) * _G) >> _SHIFT_U
        hit = u < t
        keep[j] = hit
        kept += hit
    return int(kept)


@helper
def _digit_bits(n: int) -> int:
    """Widest radix digit for rows of ``n``: about ``log2(n)`` bits, within [4, 11], so that clearing
    and summing the ``2**bits`` counts costs no more than a pass over the row."""
    bits = 4
    while bits < 11 and (2 << bits) <= n:
        bits += 1
    return bits


@helper
def _rank_row(row: Any, n: int, a: np.ndarray, b: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
    """``out[:n]`` = ranks 1..n of ``|row[j]|`` ascending, ties by index: an LSD radix sort, stable.

    Each element travels as one uint64, its sort key above its index. The key is the float32 bit
    pattern with the sign cleared (ordered as ``|x|``; every NaN gets one key, above +inf's). Only the
    span of key bits that vary in the row is sorted, in equal digits of at most :func:`_digit_bits`
    bits: in rows of 2048 or more, 2 passes for bf16 magnitudes (15 or fewer such bits), at most 3 for
    float32 (31).
    Against a first version that sorted one byte per pass (skipping constant bytes) and moved keys and
    indices in two arrays: 6.0-6.2 against 7.8-8.3 ns per element for float32 rows of 4096, 4.4-4.8
    against 4.9-5.0 for bf16; four interleaved count arrays (against store-forwarding stalls on
    repeated digits) gained nothing."""
    all_and = np.uint64(0xFFFFFFFF)
    any_or = np.uint64(0)
    for j in range(n):
        k = np.uint64(min(f32_as_u32(load_f32(row, j)) & _MAG_MASK, _NAN_KEY))
        a[j] = (k << np.uint64(32)) | np.uint64(j)
        all_and &= k
        any_or |= k
    varying = all_and ^ any_or
    src, dst = a, b
    if varying != 0:
        lo = 0
        while (varying >> np.uint64(lo)) & np.uint64(1) == 0:
            lo += 1
        hi = 31
        while (varying >> np.uint64(hi)) & np.uint64(1) == 0:
            hi -= 1
        width = hi - lo + 1
        passes = (width + _digit_bits(n) - 1) // _digit_bits(n)
        digit = (width + passes - 1) // passes
        buckets = 1 << digit
        mask = np.uint64(buckets - 1)
        for q in range(passes):
            shift = np.uint64(32 + lo + q * digit)
            counts[:buckets] = 0
            for j in range(n):
                counts[(src[j] >> shift) & mask] += 1
            total = 0
            for d in range(buckets):
                c = counts[d]
                counts[d] = total
                total += c
            for j in range(n):
                v = src[j]
                d = (v >> shift) & mask
                pos = counts[d]
                counts[d] = pos + 1
                dst[pos] = v
            src, dst = dst, src
    for pos in range(n):
        out[np.int64(src[pos] & np.uint64(0xFFFFFFFF))] = pos + 1


@helper
def row_ranks(magnitudes: Any, ncols: int, out_ranks: np.ndarray) -> None:
    """``out_ranks`` = per-row ranks (1-based, ascending ``|x|``, ties by lowest index) of a block of
    whole rows of ``ncols`` elements (``magnitudes``: float32, or bf16/f16 bit patterns as in
    ``convert``; ``out_ranks``: an int32 or int64 array of the same size). Allocates ``O(ncols)``
    scratch once per call."""
    n = magnitudes.size
    if ncols <= 0 or ncols > _MAX_COLS or n % ncols != 0:
        raise ValueError("row_ranks: the block must hold whole rows of 0 < ncols < 2**31 elements")
    a = np.empty(ncols, np.uint64)
    b = np.empty(ncols, np.uint64)
    counts = np.empty(1 << 11, np.int32)
    for off in range(0, n, ncols):
        _rank_row(magnitudes[off : off + ncols], ncols, a, b, counts, out_ranks[off : off + ncols])


@helper
def _della_row_keep(
    key: np.uint64,
    start: int,
    row_rank: np.ndarray,
    n: int,
    low: np.float32,
    eps: np.float32,
    keep: np.ndarray,
) -> int:
    """``keep[:n]`` for one row whose first element has flat index ``start``; returns how many kept.

    Branch-free: the float32 compare ``u < p * 2**24`` is the float64 one of the module docstring
    (``u`` has 24 bits and scaling by 2**24 is exact, also for subnormal ``p``)."""
    top = np.float32(n - 1) + _ONE32
    span = top - _ONE32
    single = n == 1
    base = np.uint64(start + 1)
    kept = np.int64(0)
    for j in range(n):
        rank = np.float32(row_rank[j] - 1) + _ONE32
        norm = min(max((rank - _ONE32) / span, _ZERO32), _ONE32)
        norm = _HALF32 if single else norm
        p = low + (norm * _TWO32) * eps
        u = _mix64(key + (base + np.uint64(j)) * _G) >> _SHIFT_U
        hit = np.float32(np.int32(u)) < p * _SCALE_U32
        keep[j] = hit
        kept += hit
    return int(kept)


@helper
def della_keep_block(
    key: Any, start: int, magnitudes: Any, ncols: int, density: float, epsilon: float, keep: np.ndarray
) -> int:
    """``keep`` = DELLA's keep test for a block of whole rows of ``ncols`` elements; returns how many kept.

    ``start`` is the flat index of the block's first element in its tensor (a multiple of ``ncols``),
    ``key`` the tensor's stream key (uint64), ``magnitudes`` ``|tau|`` of the block (float32 or bf16/f16
    bit patterns; the sign is ignored, so ``tau`` itself will do), ``keep`` a bool or uint8 array of the
    same size. ``density`` and ``epsilon`` are the float64 options, which the caller has checked with
    :func:`parse_della_epsilon`. Allocates ``O(ncols)`` scratch once per call."""
    n = magnitudes.size
    if ncols <= 0 or ncols > _MAX_COLS or n % ncols != 0:
        raise ValueError("della_keep_block: the block must hold whole rows of 0 < ncols < 2**31 elements")
    if density >= 1.0 or density <= 0.0:
        every = density >= 1.0
        for j in range(n):
            keep[j] = every
        return n if every else 0
    k = np.uint64(key)
    low = np.float32(density - epsilon)
    eps = np.float32(epsilon)
    a = np.empty(ncols, np.uint64)
    b = np.empty(ncols, np.uint64)
    counts = np.empty(1 << 11, np.int32)
    row_rank = np.empty(ncols, np.int32)
    kept = 0
    for off in range(0, n, ncols):
        _rank_row(magnitudes[off : off + ncols], ncols, a, b, counts, row_rank)
        kept += _della_row_keep(k, start + off, row_rank, ncols, low, eps, keep[off : off + ncols])
    return kept


@kernel
def della_keep_task(
    key: Any,
    start: int,
    base: Any,
    ft: Any,
    with_base: bool,
    ncols: int,
    density: float,
    epsilon: float,
    keep: np.ndarray,
) -> int:
    """:func:`della_keep_block` of the task vector ``ft - base`` (``ft`` alone without a base), computed
    a row at a time into an ``O(ncols)`` scratch row: the engine's blocks are whole rows of storage."""
    n = ft.size
    if ncols <= 0 or ncols > _MAX_COLS or n % ncols != 0:
        raise ValueError("della_keep_task: the block must hold whole rows of 0 < ncols < 2**31 elements")
    row = np.empty(ncols, np.float32)
    kept = 0
    for off in range(0, n, ncols):
        for j in range(ncols):
            b = load_f32(base, off + j) if with_base else _ZERO32
            row[j] = load_f32(ft, off + j) - b
        kept += della_keep_block(key, start + off, row, ncols, density, epsilon, keep[off : off + ncols])
    return kept


@kernel
def random_keep(key: Any, start: int, p: float, keep: np.ndarray) -> int:
    """:func:`random_keep_tile` over all of ``keep`` (elements ``start .. start + keep.size - 1``)."""
    return random_keep_tile(key, start, keep.size, p, keep)


@kernel
def rank_rows(magnitudes: Any, ncols: int, out_ranks: np.ndarray) -> None:
    """:func:`row_ranks` as a kernel."""
    row_ranks(magnitudes, ncols, out_ranks)


@kernel
def della_keep(
    key: Any, start: int, magnitudes: Any, ncols: int, density: float, epsilon: float, keep: np.ndarray
) -> int:
    """:func:`della_keep_block` as a kernel."""
    return della_keep_block(key, start, magnitudes, ncols, density, epsilon, keep)


# ---------------------------------------------------------------------------------------------------
# NumPy oracles: the module docstring's formulas, vectorised, uint64 arithmetic wrapping.


def bits_oracle(key: int, start: int, n: int) -> np.ndarray:
    """``bits(key, i)`` for ``i`` in ``start .. start + n - 1``, as a uint64 array."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(start)
    z = np.uint64(key) + (i + np.uint64(1)) * np.uint64(GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX_1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX_2)
    bits: np.ndarray = z ^ (z >> np.uint64(31))
    return bits


def _keep_test_oracle(key: int, start: int, p: np.ndarray | float, n: int) -> np.ndarray:
    u = bits_oracle(key, start, n) >> np.uint64(64 - U_BITS)
    keep: np.ndarray = u.astype(np.float64) < np.asarray(p, np.float64) * 2.0**U_BITS
    return keep


def random_keep_oracle(key: int, start: int, n: int, p: float) -> np.ndarray:
    """DARE's keep mask (bool) of elements ``start .. start + n - 1``."""
    return _keep_test_oracle(key, start, p, n)


def row_ranks_oracle(magnitudes: np.ndarray, ncols: int) -> np.ndarray:
    """Per-row ranks (int64, 1-based) of ``|x|`` ascending, ties by index (NumPy's stable sort)."""
    values = np.abs(decode_oracle(magnitudes.reshape(-1))).reshape(-1, ncols)
    order = np.argsort(values, axis=1, kind="stable")
    out = np.empty(values.shape, np.int64)
    np.put_along_axis(out, order, np.arange(1, ncols + 1, dtype=np.int64)[None, :], axis=1)
    return out.reshape(-1)


def della_probability_oracle(ranks: np.ndarray, ncols: int, density: float, epsilon: float) -> np.ndarray:
    """DELLA's float32 keep probabilities from 1-based ranks, as mergekit writes the expression."""
    rank = (ranks - 1).astype(np.float32) + np.float32(1)
    lowest = np.float32(1)
    top = np.float32(ncols - 1) + np.float32(1)
    if ncols == 1:
        norm = np.full(rank.shape, 0.5, np.float32)
    else:
        norm = np.clip((rank - lowest) / (top - lowest), np.float32(0), np.float32(1))
    p: np.ndarray = np.float32(density - epsilon) + (norm * np.float32(2)) * np.float32(epsilon)
    return p


def della_keep_oracle(
    key: int, start: int, magnitudes: np.ndarray, ncols: int, density: float, epsilon: float
) -> np.ndarray:
    """DELLA's keep mask (bool) of a block of whole rows starting at flat index ``start``."""
    n = magnitudes.size
    if density >= 1:
        return np.ones(n, bool)
    if density <= 0:
        return np.zeros(n, bool)
    p = della_probability_oracle(row_ranks_oracle(magnitudes, ncols), ncols, density, epsilon)
    return _keep_test_oracle(key, start, p, n)
