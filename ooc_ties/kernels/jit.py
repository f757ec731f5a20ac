"""Numba policy for every kernel, in one place.

* ``nogil=True``: the engine runs kernels on blocks from a thread pool, so they must release the GIL.
* ``cache=True``: compiled code is kept beside the module (or in numba's user cache) between runs.
* ``fastmath`` stays off: no reassociation and no fused multiply-add. The merge is specified as a
  sequence of float32 operations in a fixed order (see docs/numerics.md) and must be reproduced bit for
  bit, whatever the block size or thread count.
* ``error_model="numpy"``: a float division by zero gives inf/nan instead of raising, so the division
  in the disjoint mean needs no hidden zero check (the divisor is never zero there anyway).

Two bit-cast intrinsics live here too: Numba has no scalar ``view``, and the kernels need the float32
bit pattern of a value (bf16 decoding and encoding, histogram bins over bit patterns).
"""

from __future__ import annotations

import copyreg
import importlib
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["f32_as_u32", "helper", "inlined", "kernel", "u32_as_f32"]

F = TypeVar("F", bound=Callable[..., Any])


def kernel(fn: F) -> F:
    """Compile ``fn`` as an ooc-ties kernel (see the module docstring for the policy)."""
    return cast(F, _by_name(numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")(fn), fn))


def helper(fn: F) -> F:
    """Compile a helper called from kernels (same policy; LLVM inlines it into the caller). It is marked
    ``is_helper``: kernels, not helpers, are the entry points each listed with its oracle
    (``ooc_ties.kernels.pairs``)."""
    compiled = _by_name(numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")(fn), fn)
    setattr(compiled, "is_helper", True)  # noqa: B010 (a Dispatcher takes attributes; mypy does not know)
    return cast(F, compiled)


def inlined(fn: F) -> F:
    """Compile a helper that Numba inlines into each kernel calling it, in Numba's own IR (same policy
    otherwise). For a tile's whole step (the report's ``_count_tile`` in ``merge``): LLVM does not
    inline a function that size, and called, its loops ran at 9.8 ns per element against 7.0 inlined
    (docs/performance.md, step 27). The price is compile time: typing the call compiles the helper
    on its own too, so a kernel should call one only where it is needed (``merge`` calls it under
    ``if counts is not None``, which Numba prunes when ``counts`` is ``None``).

    Numba's cache checks only the modification time of the file that defines a kernel: after editing
    an inlined helper in another module (``report.py``'s ``_count_tile`` for ``ties.py``'s ``merge``),
    clear the cache (``NUMBA_CACHE_DIR``) or touch the kernel's file. An installed package is not
    affected."""
    options: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}
    compiled = _by_name(numba.njit(inline="always", **options)(fn), fn)
    setattr(compiled, "is_helper", True)  # noqa: B010
    return cast(F, compiled)


# A task sent to a cluster's worker (:mod:`ooc_ties.cluster`) is pickled with the kernels it calls. By
# default a numba dispatcher pickles its Python function, and the worker builds a dispatcher of its own
# from it, which compiles (or loads from the cache) again for every merge: measured on the 1b shape, a
# running cluster's pass 1 took 9.9 s against 5.4 s in one process. Our kernels pickle by name instead:
# the worker imports the module and calls the dispatcher it already compiled.
_NAMED: dict[int, tuple[str, str]] = {}


def _by_name(compiled: Any, fn: Callable[..., Any]) -> Any:
    _NAMED[id(compiled)] = (fn.__module__, fn.__qualname__)
    if type(compiled) not in copyreg.dispatch_table:
        copyreg.pickle(type(compiled), _reduce_dispatcher)
    return compiled


def _reduce_dispatcher(compiled: Any) -> Any:
    named = _NAMED.get(id(compiled))
    if named is None:  # (another library's dispatcher: numba's own way)
        return compiled.__reduce__()
    return (_import_kernel, named)


def _import_kernel(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


@intrinsic
def _u32_as_f32(typingctx: Any, bits: Any) -> Any:
    """Reinterpret a uint32 as the float32 with the same bit pattern."""
    if not isinstance(bits, types.Integer):
        return None
    sig = types.float32(bits)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        value = context.cast(builder, args[0], signature.args[0], types.uint32)
        return builder.bitcast(value, ir.FloatType())

    return sig, codegen


@intrinsic
def _f32_as_u32(typingctx: Any, value: Any) -> Any:
    """Reinterpret a float32 as the uint32 with the same bit pattern."""
    if not isinstance(value, types.Float):
        return None
    sig = types.uint32(value)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        as_f32 = context.cast(builder, args[0], signature.args[0], types.float32)
        return builder.bitcast(as_f32, ir.IntType(32))

    return sig, codegen


# Typed aliases: as Python objects the intrinsics take (typingctx, x); inside kernels, just x.
u32_as_f32 = cast(Callable[[Any], np.float32], _u32_as_f32)
f32_as_u32 = cast(Callable[[Any], np.uint32], _f32_as_u32)
