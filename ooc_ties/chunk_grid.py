"""The chunk grid that cuts each tensor into blocks.

A grid is a Zarr *regular chunk grid*: one chunk shape for the whole array, edge chunks cut short. The
chunk shapes chosen here always have the form ``(1, ..., 1, c, full, ..., full)``: whole trailing rows,
a run along one axis, single steps on the axes before it. In C order every such chunk is one contiguous
run of elements, so a block of a safetensors tensor is a plain slice of the memory map, and the same
chunk shape can be handed to Zarr unchanged (``zarr.create_array(..., chunks=grid.chunks)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ChunkGrid", "flat_selection"]


@dataclass(frozen=True, slots=True)
class ChunkGrid:
    """A regular chunk grid over an array of ``shape`` with chunks of ``chunks``."""

    shape: tuple[int, ...]
    """The array shape."""
    chunks: tuple[int, ...]
    """The chunk shape (same rank; each entry at least 1)."""

    def __post_init__(self) -> None:
        if len(self.chunks) != len(self.shape) or any(c < 1 for c in self.chunks):
            raise ValueError(f"chunks {self.chunks} do not fit shape {self.shape}")
        split = self._split_axis()
        if split is not None and any(self.chunks[a] != 1 and self.shape[a] > 1 for a in range(split)):
            raise ValueError(f"chunks {self.chunks} of shape {self.shape} are not contiguous in C order")

    def _split_axis(self) -> int | None:
        """The last axis whose chunk is shorter than the array (``None`` if one chunk covers all)."""
        return next((a for a in reversed(range(len(self.shape))) if self.chunks[a] < self.shape[a]), None)

    @classmethod
    def for_block_size(cls, shape: tuple[int, ...], max_elements: int) -> ChunkGrid:
        """The grid of largest contiguous chunks holding at most ``max_elements`` elements each."""
        max_elements = max(1, max_elements)
        chunks = [max(1, s) for s in shape]
        inner = 1  # elements in one step along axis ``axis`` (product of the axes after it)
        for axis in range(len(shape) - 1, -1, -1):
            size = max(1, shape[axis])
            if inner * size <= max_elements:
                inner *= size
                continue
            chunks[axis] = max(1, max_elements // inner)
            for before in range(axis):
                chunks[before] = 1
            break
        return cls(tuple(shape), tuple(chunks))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def chunk_elements(self) -> int:
        return math.prod(self.chunks)

    @property
    def nblocks(self) -> int:
        if self.numel == 0:
            return 0
        return math.prod(-(-s // c) for s, c in zip(self.shape, self.chunks, strict=True))

    def blocks(self) -> Iterator[tuple[int, int]]:
        """Flat ``[start, stop)`` element ranges of the chunks, in C order (zero-size arrays: none)."""
        if self.numel == 0:
            return
        if not self.shape:
            yield (0, 1)
            return
        split = self._split_axis()
        if split is None:
            yield (0, self.numel)
            return
        inner = math.prod(self.shape[split + 1 :])
        outer = math.prod(self.shape[:split])
        length = self.shape[split]
        step = self.chunks[split]
        for o in range(outer):
            row = o * length * inner
            for begin in range(0, length, step):
                yield (row + begin * inner, row + min(begin + step, length) * inner)


def flat_selection(shape: tuple[int, ...], start: int, stop: int) -> tuple[tuple[int | slice, ...], int] | None:
    """An N-d selection that covers exactly the flat C-order elements ``[start, stop)``, if one exists.

    Returns ``(selection, count)`` for a range of the form "one index on each leading axis, a run on
    the next, everything after it" (every chunk of a :class:`ChunkGrid` has that form), else ``None``.
    A Zarr or NumPy array indexed with the selection and flattened gives exactly those elements.
    """
    if not shape:
        return ((), 1) if (start, stop) == (0, 1) else None
    if stop <= start:
        return None
    for axis in range(len(shape)):
        inner = math.prod(shape[axis + 1 :])
        if inner == 0 or start % inner or stop % inner:
            continue
        first, last = start // inner, stop // inner - 1  # flat positions over the axes up to ``axis``
        lead_first = _unravel(first, shape[: axis + 1])
        lead_last = _unravel(last, shape[: axis + 1])
        if lead_first[:-1] == lead_last[:-1]:
            selection: tuple[int | slice, ...] = (*lead_first[:-1], slice(lead_first[-1], lead_last[-1] + 1))
            return selection, stop - start
    return None


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        index, rest = divmod(index, size)
        out.append(rest)
    return tuple(reversed(out))
