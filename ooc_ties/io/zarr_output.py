"""Writing a model as a Zarr v3 group, block by block (the layout is in :mod:`ooc_ties.io.zarr_format`).

Each tensor becomes one array chunked on the engine's grid, so every block the engine writes is one
whole chunk: no read-modify-write, and blocks may be written from any thread in any order. Chunks are
stored uncompressed by default (model weights compress poorly and the codec would cost CPU time);
``compressors`` takes any Zarr v3 codec list.

The group is built in a :class:`~ooc_ties.io.staging.StagedDirectory` and published by one rename when
the destination is a local path; a ``zarr.Group`` given by the caller (any store: memory, zip, fsspec)
is written in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ooc_ties.errors import OptionError, OutputPathError
from ooc_ties.io.block_writer import ZarrChunks, zarr_block
from ooc_ties.io.side_files import PIECE, SideFile, SideFileLike
from ooc_ties.io.staging import StagedDirectory
from ooc_ties.io.zarr_format import DTYPE_ATTRIBUTE, FILES_ATTRIBUTE, FILES_GROUP, RECIPE_ATTRIBUTE, encode_files
from ooc_ties.tensor import Tensor

if TYPE_CHECKING:
    import zarr

__all__ = ["ChunkedSpec", "ZarrOutput"]


@dataclass(frozen=True, slots=True)
class ChunkedSpec:
    """A tensor to be written, with its chunk shape."""

    tensor: Tensor
    """Name, dtype, shape."""
    chunks: tuple[int, ...]
    """Chunk shape (the engine's grid)."""


class ZarrOutput:
    """A Zarr v3 group written block by block; ``target`` is a staged local directory or a group."""

    def __init__(
        self,
        target: StagedDirectory | zarr.Group,
        tensors: Sequence[ChunkedSpec],
        *,
        compressors: Any = None,
    ) -> None:
        import zarr  # (here, not at the top: a safetensors merge never pays for importing it)
        import zarr.storage

        self.staging = target if isinstance(target, StagedDirectory) else None
        if isinstance(target, StagedDirectory):
            if target.resumed:
                _remove_torn_writes(target.path)
            self.group = zarr.open_group(zarr.storage.LocalStore(target.path), mode="a", zarr_format=3)
            resumed = target.resumed
        else:
            self.group = target
            resumed = False
        self._compressors = compressors
        self._arrays: dict[str, zarr.Array[Any]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._storage: dict[str, np.dtype] = {}
        existing = set(self.group.array_keys()) if resumed else set()
        for item in tensors:
            spec = item.tensor
            if spec.name.split("/")[0] == FILES_GROUP:
                raise OutputPathError(f"{self.location}: tensor {spec.name!r} would clash with the side files' group")
            attributes: dict[str, Any] = {DTYPE_ATTRIBUTE: spec.dtype.code}
            if spec.name in existing:
                array = self.group[spec.name]
                if not (
                    isinstance(array, zarr.Array)
                    and tuple(array.shape) == spec.shape
                    and tuple(array.chunks) == item.chunks
                    and np.dtype(array.dtype) == spec.dtype.storage
                    and array.attrs.get(DTYPE_ATTRIBUTE) == spec.dtype.code
                ):
                    raise OutputPathError(f"{self.location}: array {spec.name!r} does not match this merge")
            else:
                try:
                    array = self.group.create_array(
                        spec.name,
                        shape=spec.shape,
                        dtype=spec.dtype.storage,
                        chunks=item.chunks,
                        compressors=compressors,
                        attributes=attributes,
                        config={"write_empty_chunks": True},
                    )
                except zarr.errors.ContainsArrayError:
                    raise OutputPathError(f"{self.location}: already holds an array {spec.name!r}") from None
            self._arrays[spec.name] = array
            self._shapes[spec.name] = spec.shape
            self._storage[spec.name] = spec.dtype.storage

    @property
    def location(self) -> str:
        if self.staging is not None:
            return str(self.staging.destination)
        return str(self.group.store_path)

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (storage bits) as flat elements ``start...`` of ``name``: one whole chunk."""
        selection, block_shape = self._block(name, start, start + values.size)
        # A copy: the caller reuses ``values``, and a store may keep the very buffer it is given
        # (zarr's MemoryStore does, since the bytes codec does not copy). The view keeps the bits of
        # kernel encodings (F16 travels as int16) instead of converting their values.
        self._arrays[name][selection] = values.view(self._storage[name]).reshape(block_shape).copy()

    def patch(self, name: str, start: int, stop: int, at: np.ndarray, values: np.ndarray) -> None:
        """Overwrite elements ``start + at`` of the block ``[start, stop)``: read, change, write the chunk."""
        selection, block_shape = self._block(name, start, stop)
        array = self._arrays[name]
        block = np.asarray(array[selection]).reshape(-1).copy()
        block[at] = values.view(self._storage[name])
        array[selection] = block.reshape(block_shape)

    def _block(self, name: str, start: int, stop: int) -> tuple[tuple[int | slice, ...], tuple[int, ...]]:
        return zarr_block(self._shapes[name], name, start, stop)

    def block_writer(self) -> ZarrChunks:
        """What writes whole blocks of this group from another process (a cluster's worker)."""
        import zarr.storage

        if isinstance(self.group.store, zarr.storage.MemoryStore):
            raise OptionError(
                f"{self.location}: a Zarr group in this process's memory cannot be written by a cluster's workers"
            )
        return ZarrChunks(
            self.group.store,
            self.group.path,
            dict(self._shapes),
            {name: storage.str for name, storage in self._storage.items()},
        )

    def sync(self) -> None:
        """Wait until every block written so far is on disk (a local store only)."""
        if self.staging is not None:
            os.sync()

    def finish(self, files: Mapping[str, SideFileLike], recipe: dict[str, Any] | None = None) -> None:
        """Store the side files (small ones as a group attribute, large ones as ``uint8`` arrays: see
        :mod:`ooc_ties.io.zarr_format`) and the recipe as a group attribute."""
        listed, large = encode_files(files)
        for key, file in large.items():
            self._store_file(key, file)
        attributes: dict[str, Any] = {FILES_ATTRIBUTE: listed}
        if recipe is not None:
            attributes[RECIPE_ATTRIBUTE] = recipe
        self.group.attrs.update(attributes)
        if self.staging is not None and self.staging.durable:
            os.sync()

    def _store_file(self, key: str, file: SideFile) -> None:
        """Write ``file`` into a new ``uint8`` array ``key``, one chunk at a time."""
        array = self.group.create_array(
            key,
            shape=(file.size,),
            dtype=np.uint8,
            chunks=(PIECE,),
            compressors=self._compressors,
            overwrite=True,  # (a resumed merge may have stored it already)
        )
        start = 0
        for piece in file.pieces():
            array[start : start + len(piece)] = np.frombuffer(piece, np.uint8)
            start += len(piece)

    def close(self) -> None:
        """Nothing held open: every write has completed when it returns."""


def _remove_torn_writes(root: Path) -> None:
    """Delete the temporary files of writes a killed process left behind.

    zarr's ``LocalStore`` writes each key to ``<key>.<random>.partial`` and renames it into place, so
    every chunk file is whole or absent; the temporary files of a killed process would otherwise stay
    in the published group.
    """
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".partial"):
                (Path(dirpath) / name).unlink()
