"""Writing a model folder: streaming safetensors shards, published atomically.

A :class:`ShardWriter` computes the whole header up front (names, dtypes, shapes and offsets are known
from the plan), writes it, reserves the file's full size, and then takes tensor data in any order at
known offsets with ``pwrite``: workers write their blocks as they finish, and no tensor is ever held
whole in memory. Tensors are laid out by decreasing item size, then name (as ``safetensors`` does), so
every tensor starts aligned to its item size, with no gaps between them.

An :class:`OutputFolder` builds the folder under a hidden temporary name beside the destination and
renames it into place only when everything is written; on failure the temporary folder is removed, so
the destination either holds a complete merge or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ooc_ties.dtypes import DType
from ooc_ties.errors import DiskSpaceError, OutputPathError

__all__ = [
    "INDEX_NAME",
    "OutputFolder",
    "ShardLayout",
    "ShardWriter",
    "TensorSpec",
    "check_destination",
    "layout_shards",
]

INDEX_NAME = "model.safetensors.index.json"
"""The index file of a sharded Hugging Face checkpoint."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A tensor to be written."""

    name: str
    """Its name."""
    dtype: DType
    """Its dtype."""
    shape: tuple[int, ...]
    """Its shape."""

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize


@dataclass(frozen=True, slots=True)
class ShardLayout:
    """One output file of a model folder."""

    file_name: str
    """Its name in the folder."""
    tensors: tuple[str, ...]
    """The tensors it holds."""
    nbytes: int
    """Bytes of tensor data in it."""


def layout_shards(sizes: Sequence[tuple[str, int]], shard_size: int) -> tuple[ShardLayout, ...]:
    """Pack ``(name, nbytes)`` in order into files of at most ``shard_size`` bytes.

    A tensor larger than ``shard_size`` gets a file of its own. One file is ``model.safetensors``;
    several are ``model-0000i-of-0000n.safetensors``, the Hugging Face names.
    """
    groups: list[list[tuple[str, int]]] = []
    size = 0
    for name, nbytes in sizes:
        if not groups or (groups[-1] and size + nbytes > shard_size):
            groups.append([])
            size = 0
        groups[-1].append((name, nbytes))
        size += nbytes
    if len(groups) <= 1:
        return (ShardLayout("model.safetensors", tuple(n for n, _ in sizes), sum(b for _, b in sizes)),)
    count = len(groups)
    return tuple(
        ShardLayout(f"model-{i + 1:05d}-of-{count:05d}.safetensors", tuple(n for n, _ in g), sum(b for _, b in g))
        for i, g in enumerate(groups)
    )


def _header(tensors: Sequence[TensorSpec], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """The padded header bytes and each tensor's offset in the data buffer."""
    entries: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offsets: dict[str, int] = {}
    position = 0
    for spec in sorted(tensors, key=lambda s: (-s.dtype.itemsize, s.name)):
        offsets[spec.name] = position
        entries[spec.name] = {
            "dtype": spec.dtype.code,
            "shape": list(spec.shape),
            "data_offsets": [position, position + spec.nbytes],
        }
        position += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return raw, offsets


class ShardWriter:
    """One safetensors file written block by block, from any thread."""

    def __init__(self, path: Path, tensors: Sequence[TensorSpec], metadata: dict[str, str]) -> None:
        self.path = path
        self.specs = {s.name: s for s in tensors}
        header, offsets = _header(tensors, metadata)
        data_start = 8 + len(header)
        self.offsets = {name: data_start + off for name, off in offsets.items()}
        self.size = data_start + sum(s.nbytes for s in tensors)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._write_at(len(header).to_bytes(8, "little") + header, 0)
            _reserve(self._fd, self.size, path)
        except BaseException:
            os.close(self._fd)
            raise

    def _write_at(self, data: Any, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (storage dtype, contiguous) as elements ``start...`` of tensor ``name``."""
        self._write_at(np.ascontiguousarray(values), self.offsets[name] + start * self.specs[name].dtype.itemsize)

    def close(self, *, durable: bool = False) -> None:
        """Close the file; with ``durable``, first wait until its data is on disk (``fsync``)."""
        if self._fd >= 0:
            if durable:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _reserve(fd: int, size: int, path: Path) -> None:
    """Allocate the file's blocks now, so a full disk fails here and not in the middle of pass 2."""
    try:
        os.posix_fallocate(fd, 0, size)
    except AttributeError:  # pragma: no cover - not on Linux
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise DiskSpaceError(f"{path}: not enough free disk space for {size:,} bytes") from None
        if exc.errno in (95, 22):  # EOPNOTSUPP, EINVAL: file system without fallocate
            os.ftruncate(fd, size)
        else:
            raise


def check_destination(destination: Path, *, overwrite: bool) -> None:
    """Refuse a destination that is a file, or a non-empty folder unless ``overwrite``."""
    if not destination.exists():
        return
    if not destination.is_dir():
        raise OutputPathError(f"{destination}: exists and is not a folder")
    if not overwrite and any(destination.iterdir()):
        raise OutputPathError(f"{destination}: already exists (choose another path or --overwrite)")


class OutputFolder:
    """A model folder built under a temporary name and published by one rename."""

    def __init__(self, destination: str | os.PathLike[str], *, overwrite: bool = False, durable: bool = False) -> None:
        self.destination = Path(destination).absolute()
        self.durable = durable
        check_destination(self.destination, overwrite=overwrite)
        self._created: list[Path] = []
        parent = self.destination.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append(folder)
        self.staging = self.destination.parent / f".{self.destination.name}.ooc-ties-partial-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()
        self._shards: list[ShardWriter] = []
        self._done = False

    def shard(self, file_name: str, tensors: Sequence[TensorSpec], metadata: dict[str, str]) -> ShardWriter:
        writer = ShardWriter(self.staging / file_name, tensors, metadata)
        self._shards.append(writer)
        return writer

    def write_text(self, file_name: str, text: str) -> None:
        (self.staging / file_name).write_text(text, encoding="utf-8")

    def write_index(self, shards: Sequence[ShardLayout]) -> None:
        """Write ``model.safetensors.index.json`` when the model has more than one shard."""
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in shards)},
                "weight_map": {name: s.file_name for s in shards for name in s.tensors},
            }
            self.write_text(INDEX_NAME, json.dumps(index, indent=2) + "\n")

    def copy_in(self, source: Path) -> None:
        shutil.copyfile(source, self.staging / source.name)

    def commit(self) -> Path:
        """Close every shard and move the folder into place.

        The rename makes the folder appear complete to every process at once. With ``durable``, every
        file is first flushed to disk, so that not even a power failure can leave a published folder
        with missing data; without it (the default, like ``cp`` or mergekit) the data may still be in
        the page cache, written back by the kernel, when the call returns.
        """
        for shard in self._shards:
            shard.close(durable=self.durable)
        if self.durable:
            _fsync_dir(self.staging)
        if self.destination.exists():
            trash = self.destination.parent / f".{self.destination.name}.ooc-ties-old-{uuid.uuid4().hex[:8]}"
            self.destination.rename(trash)
            self.staging.rename(self.destination)
            shutil.rmtree(trash)
        else:
            self.staging.rename(self.destination)
        if self.durable:
            _fsync_dir(self.destination.parent)
        self._done = True
        return self.destination

    def abort(self) -> None:
        """Remove everything this folder wrote (the destination itself is untouched)."""
        for shard in self._shards:
            try:
                os.close(shard._fd)
            except OSError:
                pass
            shard._fd = -1
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                pass

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
