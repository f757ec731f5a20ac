"""The merge inputs (a base and fine-tuned checkpoints), served block by block in kernel encoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ooc_ties.dtypes import F16, I8, DType
from ooc_ties.identity import InputsIdentity
from ooc_ties.kernels.convert import decode, decode_oracle
from ooc_ties.sources import TensorSource

__all__ = ["MergeInputs", "kernel_array"]


def kernel_array(view: np.ndarray, dtype: DType) -> np.ndarray:
    """A storage view re-typed for the kernels: F16 travels as int16 bits (see ``kernels.convert``)."""
    return view.view(np.int16) if dtype == F16 else view


@dataclass(frozen=True, slots=True)
class MergeInputs:
    """A base checkpoint and the fine-tuned checkpoints, in the order given."""

    base: TensorSource
    """The model the fine-tunes started from."""
    fts: tuple[TensorSource, ...]
    """The fine-tuned models; their order fixes the order of every float32 sum."""
    sign: TensorSource | None = None
    """The model whose task vector elects the sign (``--sign-from``), if not the vote."""

    @property
    def all(self) -> tuple[TensorSource, ...]:
        """The base, the fine-tuned models, and the sign's model if there is one."""
        return (self.base, *self.fts, *((self.sign,) if self.sign is not None else ()))

    def sign_block(self, name: str, start: int, stop: int) -> np.ndarray:
        """Elements ``[start, stop)`` of tensor ``name`` of the sign's model (kernel encoding).

        A file of elected signs (int8, ``--save-signs``) becomes float32 values one step from the
        base's, up for +1, down for -1, the base's own for 0: the kernels take the sign's model's task
        value ``value - base``, and the difference of two adjacent floats is exact, so each elected
        sign is the file's."""
        if self.sign is None:
            raise ValueError("no sign model")
        dtype = self.sign.info(name).dtype
        if dtype != I8:
            return kernel_array(self.sign.read(name, start, stop), dtype)
        signs = np.asarray(self.sign.read(name, start, stop))
        b = decode_oracle(kernel_array(self.base.read(name, start, stop), self.base.info(name).dtype))
        up, down = np.nextafter(b, np.float32(np.inf)), np.nextafter(b, np.float32(-np.inf))
        return np.where(signs > 0, up, np.where(signs < 0, down, b)).astype(np.float32)

    def block(self, name: str, start: int, stop: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Elements ``[start, stop)`` of tensor ``name``: the base and a tuple of fine-tuned blocks.

        Zero-copy views, except when the fine-tuned models store this tensor in different dtypes: the
        kernels take one dtype for all of them, so each is then decoded into a float32 copy.
        """
        base = kernel_array(self.base.read(name, start, stop), self.base.info(name).dtype)
        fts = tuple(kernel_array(ft.read(name, start, stop), ft.info(name).dtype) for ft in self.fts)
        if len({a.dtype for a in fts}) > 1:
            decoded = []
            for a in fts:
                out = np.empty(a.size, np.float32)
                decode(a, out)
                decoded.append(out)
            fts = tuple(decoded)
        return base, fts

    def identity(self) -> InputsIdentity | None:
        """What every input reads, base first (see :mod:`ooc_ties.identity`); ``None`` if an input has
        no identity (in-memory arrays, remote stores), because then nothing cheap tells whether its data
        changed."""
        parts = [source.identity() for source in self.all]
        if any(part is None for part in parts):
            return None
        return InputsIdentity(tuple(p for p in parts if p is not None))

    def release(self, name: str, start: int, stop: int) -> None:
        """Drop the block's pages from this process (they stay in the page cache)."""
        for checkpoint in self.all:
            checkpoint.release(name, start, stop)

    def value(self, which: int, name: str, index: int) -> float:
        """One element as float32 (``which`` 0 is the base, 1.. the fine-tunes), for error messages."""
        checkpoint = self.all[which]
        raw = kernel_array(checkpoint.read(name, index, index + 1), checkpoint.info(name).dtype)
        return float(decode_oracle(raw)[0])

    def describe_nonfinite(self, name: str, index: int, model: int | None, out_dtype: DType | None = None) -> str:
        """Why element ``index`` of ``name`` gave a non-finite value: which input holds NaN/inf.

        ``model`` is the fine-tuned model whose task vector was not finite (pass 1), or ``None`` for a
        merged value that is not finite in ``out_dtype`` (pass 2).
        """
        candidates: Sequence[int] = range(len(self.all)) if model is None else (0, model + 1)
        for which in candidates:
            value = self.value(which, name, index)
            if not np.isfinite(value):
                return f"{self.all[which].where(name)} holds {value} at element {index}"
        if model is not None:
            return (
                f"{self.fts[model].where(name)}: the task vector overflows float32 at element {index} "
                f"(fine-tuned {self.value(model + 1, name, index)!r} minus base {self.value(0, name, index)!r})"
            )
        return (
            f"tensor {name!r}: the merged value at element {index} is not finite in {out_dtype} "
            "(lower --lambda or --weights, or choose a wider --dtype)"
        )
