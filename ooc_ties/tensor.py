"""The tensor description every layer shares: a name, a dtype and a shape.

A checkpoint's header lists them (:class:`~ooc_ties.io.safetensors.StoredTensor` adds where the bytes
are), arrays given as inputs are described by them, writers are told them, and the plan derives each
merged tensor's output description from its inputs' (``TensorPlan.output``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ooc_ties.dtypes import DType

__all__ = ["Tensor"]


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor's name, dtype and shape."""

    name: str
    """Its name (in a safetensors header, a Zarr group, a mapping of arrays)."""
    dtype: DType
    """Its dtype."""
    shape: tuple[int, ...]
    """Its shape (``()`` for a scalar)."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize
