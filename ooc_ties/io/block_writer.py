"""Writing output blocks from another process: a cluster's worker writes the blocks it merged itself.

An output (:mod:`ooc_ties.outputs`) is built and published by the driver; what a worker gets is a
:class:`BlockWriter`, a small value that names where each tensor's bytes go and pickles:

* :class:`FileRanges`: safetensors files the driver created whole (header written, size reserved:
  :class:`~ooc_ties.io.writer.ShardWriter`); a block is one ``pwrite`` at its tensor's offset. The files
  must be on a file system every worker mounts at the same path.
* :class:`ZarrChunks`: a Zarr v3 group whose arrays the driver created; a block is one whole chunk, so
  no two tasks ever write the same chunk (partial writes of one chunk or shard from two processes
  would lose data: dask#12583, zarr#3682).
* :class:`NoWrites`: a merge run for its statistics only.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from ooc_ties.chunk_grid import flat_selection
from ooc_ties.errors import DiskSpaceError
from ooc_ties.io.direct import BounceBuffer, DirectWriter

__all__ = ["BlockWriter", "FileRanges", "NoWrites", "ZarrChunks", "zarr_block"]


class BlockWriter(Protocol):
    """Writes whole blocks of an output from any process."""

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (storage dtype) as flat elements ``start...`` of tensor ``name``."""
        ...


@dataclass(frozen=True, slots=True)
class FileRanges:
    """Where each tensor's data starts in the files the driver created."""

    places: Mapping[str, tuple[str, int, int]]
    """By tensor name: its file's path, its data's byte offset in it, its item size."""
    direct: bool = False
    """Write whole pages past the page cache (``O_DIRECT``) where the file system allows it, as the
    driver's own writer does (:mod:`ooc_ties.io.direct`); the bytes are the same."""

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        path, offset, itemsize = self.places[name]
        fd = os.open(path, os.O_WRONLY)  # (opened per block: a worker holds no file between tasks)
        writer = DirectWriter(Path(path), fd, _bounce() if self.direct else None)
        try:
            writer.pwrite(np.ascontiguousarray(values), offset + start * itemsize)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskSpaceError(f"{path}: the disk is full (writing tensor '{name}')") from exc
            raise OSError(exc.errno, f"{exc.strerror} (writing tensor '{name}')", path) from exc
        finally:
            writer.close()
            os.close(fd)


_BOUNCE = threading.local()


def _bounce() -> BounceBuffer:
    """This worker thread's bounce buffer for direct writes."""
    buffer = getattr(_BOUNCE, "buffer", None)
    if buffer is None:
        buffer = _BOUNCE.buffer = BounceBuffer()
    return buffer


@dataclass(frozen=True, slots=True)
class ZarrChunks:
    """A Zarr v3 group's arrays, one chunk per block."""

    store: Any
    """The group's store (it pickles: a local folder, or an fsspec store every worker reaches)."""
    path: str
    """The group's path in the store."""
    shapes: Mapping[str, tuple[int, ...]]
    """By array name, its shape."""
    storage: Mapping[str, str]
    """By array name, its storage dtype (the bits a block's values are viewed as)."""
    _open: dict[str, Any] = field(default_factory=dict, compare=False)

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        import zarr  # (only a Zarr output's workers pay for it)

        array = self._open.get(name)
        if array is None:
            group = zarr.open_group(self.store, path=self.path, mode="r+", zarr_format=3)
            array = self._open[name] = cast(Any, group[name])
        selection, block_shape = zarr_block(self.shapes[name], name, start, start + values.size)
        array[selection] = values.view(np.dtype(self.storage[name])).reshape(block_shape)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.store, self.path, self.shapes, self.storage)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for key, value in zip(("store", "path", "shapes", "storage"), state, strict=True):
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_open", {})


@dataclass(frozen=True, slots=True)
class NoWrites:
    """Keeps nothing (``ooc-ties analyze``)."""

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        pass


def zarr_block(shape: tuple[int, ...], name: str, start: int, stop: int) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """The selection of flat elements ``[start, stop)`` of an array of ``shape`` that is one chunk of the
    engine's grid, and that block's shape."""
    found = flat_selection(shape, start, stop)
    if found is None:
        raise ValueError(f"elements [{start}, {stop}) of {name!r} are not one block")
    selection = found[0]
    block_shape: tuple[int, ...] = ()
    if selection:
        last = cast(slice, selection[-1])
        block_shape = (last.stop - last.start, *shape[len(selection) :])
    return selection, block_shape
