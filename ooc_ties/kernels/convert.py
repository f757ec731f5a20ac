"""Float conversions between storage dtypes and float32, element helpers and their NumPy oracles.

Storage convention for kernels (NumPy has no bfloat16 and Numba no float16 on the CPU): 16-bit floats
travel as integer bit patterns, and the integer type tells which float they are:

==========  ==================  =========================================
storage     kernel array dtype  decoding
==========  ==================  =========================================
BF16        ``uint16``          bits << 16 reinterpreted as float32 (exact)
F16         ``int16``           IEEE half decoded bit by bit (exact)
F32         ``float32``         as is
F64         ``float64``         rounded to float32, nearest-even
==========  ==================  =========================================

Encoding float32 to bf16 and f16 rounds to nearest, ties to even: for bf16 the same bit formula as
torch's ``Tensor.to(torch.bfloat16)``, for f16 the same result as NumPy's ``astype(np.float16)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import types
from numba.extending import overload

from ooc_ties.kernels.jit import f32_as_u32, helper, kernel, u32_as_f32

__all__ = [
    "bf16_bits_from_f32",
    "decode",
    "decode_oracle",
    "encode",
    "encode_oracle",
    "f16_bits_from_f32",
    "f32_from_f16_bits",
    "load_f32",
    "store_f32",
    "stored_finite",
]


@helper
def f32_from_f16_bits(h16: np.int16) -> np.float32:
    """Decode one IEEE half (given as its int16 bit pattern) to float32, exactly."""
    h = np.uint32(np.uint16(h16))
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exp = (h >> np.uint32(10)) & np.uint32(0x1F)
    man = h & np.uint32(0x3FF)
    if exp == 0:
        # Zero or subnormal: man * 2**-24, exact in float32.
        mag = np.float32(man) * np.float32(5.9604644775390625e-08)
        return -mag if sign else mag
    if exp == 31:
        return u32_as_f32(sign | np.uint32(0x7F800000) | (man << np.uint32(13)))
    return u32_as_f32(sign | ((exp + np.uint32(112)) << np.uint32(23)) | (man << np.uint32(13)))


@helper
def bf16_bits_from_f32(x: np.float32) -> np.uint16:
    """Round float32 to bfloat16, nearest-even; NaN becomes the quiet NaN 0x7FC0 (as torch does)."""
    u = f32_as_u32(x)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16(0x7FC0)
    rounding = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16((u + rounding) >> np.uint32(16))


@helper
def f16_bits_from_f32(x: np.float32) -> np.int16:
    """Round float32 to IEEE half, nearest-even, with subnormals; returns the int16 bit pattern."""
    u = f32_as_u32(x)
    sign = (u >> np.uint32(16)) & np.uint32(0x8000)
    a = u & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):  # NaN
        return np.int16(np.uint16(sign | np.uint32(0x7E00)))
    if a >= np.uint32(0x477FF000):  # >= 65520 rounds to infinity
        return np.int16(np.uint16(sign | np.uint32(0x7C00)))
    if a >= np.uint32(0x38800000):  # normal half: rebias the exponent, round off 13 bits
        h = a - np.uint32(0x38000000)
        h = (h + np.uint32(0x0FFF) + ((h >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        return np.int16(np.uint16(sign | h))
    if a <= np.uint32(0x33000000):  # <= 2**-25: rounds to (signed) zero, the tie going to even 0
        return np.int16(np.uint16(sign))
    # Subnormal half: mantissa with its implicit bit, shifted into units of 2**-24.
    e = a >> np.uint32(23)
    m = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
    shift = np.uint32(126) - e
    r = m >> shift
    rem = m & ((np.uint32(1) << shift) - np.uint32(1))
    half = np.uint32(1) << (shift - np.uint32(1))
    if rem > half or (rem == half and (r & np.uint32(1)) != 0):
        r += np.uint32(1)
    return np.int16(np.uint16(sign | r))


def load_f32(arr: Any, i: Any) -> Any:
    """Element ``i`` of a storage array as float32 (kernels only; see the table above)."""
    raise NotImplementedError("load_f32 is only callable from compiled kernels")


def store_f32(out: Any, i: Any, value: Any) -> Any:
    """Store float32 ``value`` at ``out[i]`` in the array's storage encoding (kernels only)."""
    raise NotImplementedError("store_f32 is only callable from compiled kernels")


@overload(load_f32, jit_options={"fastmath": False, "error_model": "numpy"})
def _load_f32(arr: Any, i: Any) -> Any:
    dtype = arr.dtype
    if dtype == types.uint16:

        def load_bf16(arr: Any, i: Any) -> Any:
            return u32_as_f32(np.uint32(arr[i]) << np.uint32(16))

        return load_bf16
    if dtype == types.int16:

        def load_f16(arr: Any, i: Any) -> Any:
            return f32_from_f16_bits(arr[i])

        return load_f16
    if dtype == types.float32:

        def load_plain(arr: Any, i: Any) -> Any:
            return arr[i]

        return load_plain
    if dtype == types.float64:

        def load_f64(arr: Any, i: Any) -> Any:
            return np.float32(arr[i])

        return load_f64
    return None


@overload(store_f32, jit_options={"fastmath": False, "error_model": "numpy"})
def _store_f32(out: Any, i: Any, value: Any) -> Any:
    dtype = out.dtype
    if dtype == types.uint16:

        def store_bf16(out: Any, i: Any, value: Any) -> None:
            out[i] = bf16_bits_from_f32(value)

        return store_bf16
    if dtype == types.int16:

        def store_f16(out: Any, i: Any, value: Any) -> None:
            out[i] = f16_bits_from_f32(value)

        return store_f16
    if dtype == types.float32:

        def store_f32_plain(out: Any, i: Any, value: Any) -> None:
            out[i] = value

        return store_f32_plain
    return None


@kernel
def decode(src: Any, out: np.ndarray) -> None:
    """``out[i] = float32(src[i])`` for a storage array ``src``."""
    for i in range(src.size):
        out[i] = load_f32(src, i)


@kernel
def encode(src: np.ndarray, out: Any) -> None:
    """``out[i] = encode(src[i])``: float32 to the storage encoding of ``out``."""
    for i in range(src.size):
        store_f32(out, i, src[i])


def decode_oracle(src: np.ndarray) -> np.ndarray:
    """NumPy oracle of :func:`decode`."""
    if src.dtype == np.uint16:
        return (src.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if src.dtype == np.int16:
        return src.view(np.float16).astype(np.float32)
    return src.astype(np.float32)


def encode_oracle(src: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """NumPy oracle of :func:`encode` into an array of ``dtype`` (uint16 = bf16, int16 = f16)."""
    src = np.asarray(src, dtype=np.float32)
    if dtype == np.uint16:
        u = src.view(np.uint32).astype(np.uint64)
        bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        bits[np.isnan(src)] = 0x7FC0
        return bits
    if dtype == np.int16:
        with np.errstate(over="ignore"):
            half = src.astype(np.float16)
        return half.view(np.int16)
    return src.copy()


def stored_finite(out: Any, i: Any) -> Any:
    """Whether ``out[i]`` holds a finite value in its storage encoding (kernels only)."""
    raise NotImplementedError("stored_finite is only callable from compiled kernels")


@overload(stored_finite, jit_options={"fastmath": False, "error_model": "numpy"})
def _stored_finite(out: Any, i: Any) -> Any:
    dtype = out.dtype
    if dtype == types.uint16:

        def finite_bf16(out: Any, i: Any) -> Any:
            return (out[i] & np.uint16(0x7F80)) != np.uint16(0x7F80)

        return finite_bf16
    if dtype == types.int16:

        def finite_f16(out: Any, i: Any) -> Any:
            return (np.uint16(out[i]) & np.uint16(0x7C00)) != np.uint16(0x7C00)

        return finite_f16
    if dtype == types.float32:

        def finite_f32(out: Any, i: Any) -> Any:
            return (f32_as_u32(out[i]) & np.uint32(0x7FFFFFFF)) < np.uint32(0x7F800000)

        return finite_f32
    return None
