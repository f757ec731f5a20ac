"""A safetensors checkpoint seen as a read-only Zarr v3 group, served zero-copy from the memory map.

:class:`SafetensorsStore` is a ``zarr.abc.store.Store`` that makes up the keys of a Zarr v3 hierarchy
from the safetensors headers and the bytes already on disk; nothing is converted or written:

- ``zarr.json``: the root group; its attribute ``"safetensors_metadata"`` holds the ``__metadata__``
  string map of the (first) file.
- ``<tensor>/zarr.json``: one array per tensor, a direct child of the root (``model.layers.0.mlp.up_proj.weight``;
  a ``/`` in a tensor name makes intermediate groups). Its Zarr data type is the NumPy storage dtype,
  little-endian through the ``bytes`` codec, with no compression. zarr-python has no bfloat16, so a BF16
  tensor is a ``uint16`` array of bit patterns; every array carries its safetensors code in the
  attribute ``"safetensors_dtype"`` (``"BF16"``, ``"F32"``, ...), which is what says so.
- ``<tensor>/c/<i>/<j>/...`` (``<tensor>/c`` for a scalar): the chunks. The chunk shape is
  :meth:`ChunkGrid.for_block_size`'s, so every chunk is one contiguous run of the tensor in C order, a
  plain byte slice of the file. A chunk is handed to Zarr as a ``Buffer`` over that slice of the
  ``mmap``: no copy, no read until Zarr touches the bytes. Only the last chunk along the split axis,
  which Zarr expects at full chunk size, is copied to pad it with zeros.

A zero-size tensor is an array with no chunks (Zarr never asks for one). Metadata is made once at open,
so serving a key is a dictionary look-up and a slice; the map is read-only, so no lock is needed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.buffer import default_buffer_prototype

from ooc_ties.chunk_grid import ChunkGrid
from ooc_ties.errors import CheckpointFormatError, OptionError
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.io.zarr_format import DTYPE_ATTRIBUTE
from ooc_ties.plan import MAX_BLOCK_ELEMENTS

__all__ = ["METADATA_ATTRIBUTE", "SafetensorsStore", "open_zarr"]

METADATA_ATTRIBUTE = "safetensors_metadata"
"""Root group attribute: the file's ``__metadata__`` string map."""

_META = "zarr.json"
_CHUNKS = "c"


def _parse_chunk_elements(value: object) -> int:
    """The most elements in one chunk: a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"chunk elements must be a positive integer; got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _Array:
    """Everything needed to serve one tensor's keys."""

    name: str
    """The tensor name (and the array's path in the group)."""
    storage: np.dtype
    """The NumPy dtype of the raw bytes."""
    grid: ChunkGrid
    """The chunk grid."""
    counts: tuple[int, ...]
    """Chunks along each axis (a 0 for a zero-size tensor, which has no chunks)."""
    strides: tuple[int, ...]
    """Elements between neighbours along each axis, in C order."""
    metadata: bytes
    """The array's ``zarr.json``."""

    @property
    def chunk_nbytes(self) -> int:
        return self.grid.chunk_elements * self.storage.itemsize

    def chunk_keys(self) -> Iterator[str]:
        """Every chunk key, in C order of the chunk coordinates."""
        for coords in np.ndindex(*self.counts):
            yield "/".join((self.name, _CHUNKS, *map(str, coords)))

    def parse_coords(self, parts: list[str]) -> tuple[int, ...] | None:
        """The chunk coordinates spelled by ``parts`` (the key after ``<name>/c``), or None if none are."""
        if len(parts) != len(self.counts):
            return None
        coords = []
        for part, count in zip(parts, self.counts, strict=True):
            if not (part.isascii() and part.isdigit()) or (len(part) > 1 and part[0] == "0"):
                return None
            index = int(part)
            if index >= count:
                return None
            coords.append(index)
        return tuple(coords)


def _array_metadata(storage: np.dtype, code: str, grid: ChunkGrid) -> bytes:
    """The ``zarr.json`` of one tensor, as zarr-python itself writes it for an uncompressed array."""
    if storage.kind == "b":
        fill: bool | int | float = False
    elif storage.kind == "f":
        fill = 0.0
    else:
        fill = 0
    # Byte order means nothing for one-byte types: zarr writes the codec without it, and so does this.
    codec: dict[str, Any] = {"name": "bytes"}
    if storage.itemsize > 1:
        codec["configuration"] = {"endian": "little"}
    document = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(grid.shape),
        "data_type": storage.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(grid.chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [codec],
        "attributes": {DTYPE_ATTRIBUTE: code},
    }
    return json.dumps(document, indent=2).encode()


def _group_metadata(attributes: dict[str, Any]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}, indent=2).encode()


def _groups_for(checkpoint: Checkpoint) -> set[str]:
    """The intermediate group paths that ``/`` in tensor names implies; fails on names Zarr cannot hold."""
    groups: set[str] = set()
    for name in checkpoint.names:
        parts = name.split("/")
        bad = next((p for p in parts if p in ("", ".", "..", _META)), None)
        if bad is not None:
            raise CheckpointFormatError(
                f"{checkpoint.where(name)}: the name cannot be a Zarr node path "
                f"(segment {bad!r}; expected '/'-separated names without '', '.', '..' or {_META!r})"
            )
        groups.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = sorted(groups & set(checkpoint.names))
    if clash:
        raise CheckpointFormatError(
            f"{checkpoint.where(clash[0])}: the name is both a tensor and the parent of another tensor, "
            "which a Zarr hierarchy cannot hold"
        )
    return groups


def _slice(data: np.ndarray, byte_range: ByteRequest | None) -> np.ndarray:
    """The bytes of ``data`` (flat ``uint8``) that ``byte_range`` asks for, as a view."""
    size = len(data)
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        start, stop = byte_range.start, byte_range.end
    elif isinstance(byte_range, OffsetByteRequest):
        start, stop = byte_range.offset, size
    elif isinstance(byte_range, SuffixByteRequest):
        start, stop = size - byte_range.suffix, size
    else:
        expected = "a RangeByteRequest, OffsetByteRequest or SuffixByteRequest"
        raise TypeError(f"byte_range {byte_range!r} is invalid (expected {expected})")
    start = min(max(start, 0), size)
    return data[start : min(max(stop, start), size)]


class SafetensorsStore(Store):
    """A checkpoint (a safetensors file or a Hugging Face folder, single or sharded) as a read-only Zarr store.

    ``source`` is a path, opened here, or an open :class:`Checkpoint`; either way the store owns it and
    :meth:`close` (or leaving a ``with`` block) closes it. ``chunk_elements`` bounds the elements in one
    chunk. Chunks are zero-copy views of the memory map, valid as long as they are referenced (closing
    the store leaves a map that is still referenced alive until it is garbage-collected).
    """

    supports_writes: bool = False
    supports_deletes: bool = False
    supports_listing: bool = True

    def __init__(
        self, source: str | os.PathLike[str] | Checkpoint, *, chunk_elements: int = MAX_BLOCK_ELEMENTS
    ) -> None:
        chunk_elements = _parse_chunk_elements(chunk_elements)
        super().__init__(read_only=True)
        self.checkpoint = source if isinstance(source, Checkpoint) else Checkpoint(source)
        """The checkpoint served (owned by the store)."""
        self.chunk_elements = chunk_elements
        """The most elements in one chunk."""
        try:
            self._groups = _groups_for(self.checkpoint)
            self._arrays = {name: self._describe(name) for name in self.checkpoint.names}
        except BaseException:
            self.checkpoint.close()
            raise
        file_metadata = self.checkpoint.files[0].metadata if self.checkpoint.files else {}
        self._root = _group_metadata({METADATA_ATTRIBUTE: dict(file_metadata)})
        self._plain_group = _group_metadata({})
        self._closed = False

    def _describe(self, name: str) -> _Array:
        info = self.checkpoint.info(name)
        grid = ChunkGrid.for_block_size(info.shape, self.chunk_elements)
        counts = tuple(-(-s // c) for s, c in zip(grid.shape, grid.chunks, strict=True))
        strides = tuple(math.prod(info.shape[axis + 1 :]) for axis in range(len(info.shape)))
        storage = info.dtype.storage
        return _Array(name, storage, grid, counts, strides, _array_metadata(storage, info.dtype.code, grid))

    @property
    def path(self) -> Path:
        """The checkpoint's file or folder."""
        return self.checkpoint.path

    # -- keys ---------------------------------------------------------------------------------------

    def _metadata(self, key: str) -> bytes | None:
        """The ``zarr.json`` document at ``key``, or None if ``key`` is not a metadata key."""
        if key == _META:
            return self._root
        node, sep, last = key.rpartition("/")
        if not sep or last != _META:
            return None
        array = self._arrays.get(node)
        if array is not None:
            return array.metadata
        return self._plain_group if node in self._groups else None

    def _chunk(self, key: str) -> tuple[_Array, tuple[int, ...]] | None:
        """The array and chunk coordinates that ``key`` names, or None if it names no chunk."""
        parts = key.split("/")
        for at in range(1, len(parts)):
            if parts[at] == _CHUNKS:
                array = self._arrays.get("/".join(parts[:at]))
                if array is not None:
                    coords = array.parse_coords(parts[at + 1 :])
                    return None if coords is None else (array, coords)
        return None

    def _chunk_bytes(self, array: _Array, coords: tuple[int, ...], byte_range: ByteRequest | None) -> np.ndarray:
        """The bytes of one chunk as flat ``uint8``: a view of the map, or a zero-padded copy at the edge."""
        grid = array.grid
        starts = [i * c for i, c in zip(coords, grid.chunks, strict=True)]
        region = tuple(min(c, s - b) for c, s, b in zip(grid.chunks, grid.shape, starts, strict=True))
        first = sum(b * stride for b, stride in zip(starts, array.strides, strict=True))
        values = self.checkpoint.read(array.name, first, first + math.prod(region))
        if region == grid.chunks:
            return _slice(values.view(np.uint8), byte_range)  # contiguous in C order: zero-copy
        padded = np.zeros(grid.chunks, dtype=array.storage)
        padded[tuple(slice(0, r) for r in region)] = values.reshape(region)
        return _slice(padded.reshape(-1).view(np.uint8), byte_range)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self}: the store is closed")

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """The value at ``key`` (or the part ``byte_range`` asks for); None if there is no such key."""
        self._check_open()
        prototype = default_buffer_prototype() if prototype is None else prototype
        document = self._metadata(key)
        if document is not None:
            return prototype.buffer.from_array_like(_slice(np.frombuffer(document, np.uint8), byte_range))
        found = self._chunk(key)
        if found is None:
            return None
        return prototype.buffer.from_array_like(self._chunk_bytes(*found, byte_range))

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        return self.get_sync(key, prototype=prototype, byte_range=byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        # docstring inherited
        return [self.get_sync(key, prototype=prototype, byte_range=byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return self._metadata(key) is not None or self._chunk(key) is not None

    async def getsize(self, key: str) -> int:
        # docstring inherited
        document = self._metadata(key)
        if document is not None:
            return len(document)
        found = self._chunk(key)
        if found is None:
            raise FileNotFoundError(key)
        return found[0].chunk_nbytes

    # -- listing ------------------------------------------------------------------------------------

    def _keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix``: metadata first, then each array's chunks in C order."""
        groups = [_META, *(f"{g}/{_META}" for g in sorted(self._groups))]
        yield from (key for key in groups if key.startswith(prefix))
        for name, array in self._arrays.items():
            meta, chunks = f"{name}/{_META}", f"{name}/{_CHUNKS}"
            if meta.startswith(prefix):
                yield meta
            if chunks.startswith(prefix):
                yield from array.chunk_keys()
            elif prefix.startswith(chunks):
                yield from (key for key in array.chunk_keys() if key.startswith(prefix))

    def _children(self, node: str) -> Iterator[str]:
        """The names one level below ``node`` (a path without trailing ``/``; ``""`` for the root)."""
        if node == "" or node in self._groups:
            starts = f"{node}/" if node else ""
            below = {p[len(starts) :].split("/")[0] for p in (*self._groups, *self._arrays) if p.startswith(starts)}
            yield _META
            yield from sorted(below)
            return
        array = self._arrays.get(node)
        if array is not None:
            yield _META
            if all(array.counts):
                yield _CHUNKS
            return
        chunk_dir = self._chunk_dir(node)
        if chunk_dir is not None:
            array, axis = chunk_dir
            yield from map(str, range(array.counts[axis]))

    def _chunk_dir(self, node: str) -> tuple[_Array, int] | None:
        """For ``node`` = ``<array>/c/<i>...`` with fewer coordinates than axes: the array and next axis."""
        parts = node.split("/")
        for at in range(1, len(parts)):
            if parts[at] == _CHUNKS:
                array = self._arrays.get("/".join(parts[:at]))
                if array is None:
                    continue
                given = parts[at + 1 :]
                depth = len(given)
                if depth >= len(array.counts) or not all(array.counts):
                    return None
                padded = given + ["0"] * (len(array.counts) - depth)
                return (array, depth) if array.parse_coords(padded) is not None else None
        return None

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in self._keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in self._keys(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in self._children(prefix.rstrip("/")):
            yield key

    # -- writes are refused -------------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()

    async def delete(self, key: str) -> None:
        # docstring inherited
        self._check_writable()

    def with_read_only(self, read_only: bool = False) -> SafetensorsStore:
        """A new store over the same checkpoint (opened again); only ``read_only=True`` is possible."""
        if not read_only:
            raise ValueError(f"{self}: a safetensors checkpoint can only be opened read-only")
        return type(self)(self.path, chunk_elements=self.chunk_elements)

    # -- life cycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the checkpoint; chunks still referenced keep their part of the map alive."""
        super().close()
        self._closed = True
        self.checkpoint.close()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SafetensorsStore)
            and self.path.resolve() == other.path.resolve()
            and self.chunk_elements == other.chunk_elements
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The map cannot be pickled: a copy of the store (for another process) opens the files again.
        return (_reopen, (self.path, self.chunk_elements))

    def __str__(self) -> str:
        return f"safetensors://{self.path}"

    def __repr__(self) -> str:
        return f"SafetensorsStore({str(self.path)!r}, chunk_elements={self.chunk_elements})"


def _reopen(path: Path, chunk_elements: int) -> SafetensorsStore:
    return SafetensorsStore(path, chunk_elements=chunk_elements)


def open_zarr(path: str | os.PathLike[str], *, chunk_elements: int = MAX_BLOCK_ELEMENTS) -> zarr.Group:
    """A safetensors checkpoint (a file or a Hugging Face folder) as a read-only Zarr v3 group.

    One array per tensor, named like the tensor, chunked in contiguous runs of at most
    ``chunk_elements`` elements; BF16 tensors are ``uint16`` bit patterns with attribute
    ``safetensors_dtype = "BF16"``. The group's store (``group.store``) owns the open checkpoint: close
    it with ``group.store.close()`` when done.
    """
    store = SafetensorsStore(path, chunk_elements=chunk_elements)
    # Zarr v3 only, no consolidated metadata: zarr then asks for nothing the store does not have.
    return zarr.open_group(store=store, mode="r", zarr_format=3, use_consolidated=False)
