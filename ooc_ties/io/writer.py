"""Writing a model folder: streaming safetensors shards, published atomically.

A :class:`ShardWriter` computes the whole header up front (names, dtypes, shapes and offsets are known
from the plan), writes it, reserves the file's full size, and then takes tensor data in any order at
known offsets with ``pwrite``: workers write their blocks as they finish, and no tensor is ever held
whole in memory. Tensors are laid out by decreasing item size, then name (as ``safetensors`` does), so
every tensor starts aligned to its item size, with no gaps between them.

A :class:`SafetensorsOutput` builds the model folder (shards, index, side files, recipe) inside a
:class:`~ooc_ties.io.staging.StagedDirectory`, which publishes it by one rename, so the destination
either holds a complete merge or nothing. Side files (:mod:`ooc_ties.io.side_files`) keep their
sub-folders and are copied in pieces, never whole in memory.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ooc_ties.errors import DiskSpaceError
from ooc_ties.io.block_writer import FileRanges
from ooc_ties.io.direct import BounceBuffer, DirectWriter, pwrite_all
from ooc_ties.io.side_files import RECIPE_NAME, SideFile, SideFileLike, as_side_file, clashes_with_output
from ooc_ties.io.staging import StagedDirectory, fsync_dir
from ooc_ties.tensor import Tensor

__all__ = [
    "INDEX_NAME",
    "RECIPE_NAME",
    "SafetensorsOutput",
    "ShardLayout",
    "ShardWriter",
    "TensorSpec",
    "layout_shards",
]

INDEX_NAME = "model.safetensors.index.json"
"""The index file of a sharded Hugging Face checkpoint."""


TensorSpec = Tensor
"""(the name ``tests/test_memory.py`` still imports; :class:`~ooc_ties.tensor.Tensor` is the type)"""


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


def _header(tensors: Sequence[Tensor], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
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


DENSE_PATCH = 4096
"""A patch with an element in every 4096 bytes of its span, on average, rewrites the span in one piece
(see ``ShardWriter.patch``)."""


class ShardWriter:
    """One safetensors file written block by block, from any thread.

    ``reopen``: continue a file an interrupted merge created (its header and size are checked; a file
    that does not match, or is missing, is created anew). ``bounce``: write whole pages with
    ``O_DIRECT``, copying unaligned data through this buffer (:mod:`ooc_ties.io.direct`); without it,
    every write goes through the page cache.
    """

    def __init__(
        self,
        path: Path,
        tensors: Sequence[Tensor],
        metadata: dict[str, str],
        *,
        reopen: bool = False,
        bounce: BounceBuffer | None = None,
    ) -> None:
        self.path = path
        self.specs = {s.name: s for s in tensors}
        header, offsets = _header(tensors, metadata)
        prefix = len(header).to_bytes(8, "little") + header
        data_start = len(prefix)
        self.offsets = {name: data_start + off for name, off in offsets.items()}
        self.size = data_start + sum(s.nbytes for s in tensors)
        kept = reopen and _has_prefix(path, prefix, self.size)
        flags = os.O_WRONLY if kept else os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if reopen else os.O_EXCL)
        self._fd = os.open(path, flags, 0o644)
        try:
            if not kept:
                pwrite_all(self._fd, np.frombuffer(prefix, np.uint8), 0)
                _reserve(self._fd, self.size, path)
            self._data = DirectWriter(path, self._fd, bounce)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (storage dtype, contiguous) as elements ``start...`` of tensor ``name``.

        A failed write raises :class:`DiskSpaceError` for a full disk, else an ``OSError`` naming this
        file and the tensor (both are ``OSError``: the merge keeps its partial output for ``--resume``).
        """
        offset = self.offsets[name] + start * self.specs[name].dtype.itemsize
        try:
            self._data.pwrite(np.ascontiguousarray(values), offset)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskSpaceError(f"{self.path}: the disk is full (writing tensor '{name}')") from exc
            raise OSError(exc.errno, f"{exc.strerror} (writing tensor '{name}')", str(self.path)) from exc

    def patch(self, name: str, start: int, at: np.ndarray, values: np.ndarray) -> None:
        """Write single elements ``start + at`` of tensor ``name`` (``at`` ascending).

        A few scattered elements are written one by one, into the page cache. The pages were written
        past the page cache, so each small write would first read its page from disk, one at a time: 72
        us a page here, against 5 us after asking the kernel to read the whole span ahead
        (``POSIX_FADV_WILLNEED``, in large reads), and a write of a few bytes still costs 16 us. Where
        there is an element in every page of the span on average (:data:`DENSE_PATCH` bytes; a bf16
        model can have a few percent of open elements, 30 to 70 in a page), the span is read, changed
        and written back in one piece: 2-4 ms for a block of 4 Mi bf16 values, against 0.9 s for 58,645
        single writes (measured on a block of the synthetic demo models, 1.4% of them open).
        """
        if not at.size:
            return
        itemsize = self.specs[name].dtype.itemsize
        lo, hi = int(at.min()), int(at.max()) + 1
        first = self.offsets[name] + (start + lo) * itemsize
        if at.size * DENSE_PATCH >= (hi - lo) * itemsize:
            span = np.empty((hi - lo) * itemsize, np.uint8)
            with open(self.path, "rb") as f:  # (the writer's own descriptor is write-only)
                f.seek(first)
                if f.readinto(span.data) != span.size:
                    raise OSError(errno.EIO, f"short read patching tensor '{name}'", str(self.path))
            view = span.view(values.dtype)
            view[at - lo] = values
            self.write(name, start + lo, view)
            return
        last = self.offsets[name] + (start + hi) * itemsize
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._fd, first, last - first, os.POSIX_FADV_WILLNEED)
            except OSError:  # only advice: the writes below are right without it
                pass
        for index, value in zip(at.tolist(), values, strict=True):
            self.write(name, start + index, value.reshape(1))

    def block_writer(self) -> FileRanges:
        """What writes blocks of this file from another process (a cluster's worker): its tensors'
        offsets, for ``pwrite`` through a descriptor of the worker's own."""
        return FileRanges(
            {name: (str(self.path), offset, self.specs[name].dtype.itemsize) for name, offset in self.offsets.items()},
            self._data.direct,
        )

    def sync(self) -> None:
        """Wait until the data written so far is on disk."""
        if self._fd >= 0:
            os.fdatasync(self._fd)

    def close(self, *, durable: bool = False) -> None:
        """Close the file; with ``durable``, first wait until its data is on disk (``fsync``)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                self._data.close()
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)


def _has_prefix(path: Path, prefix: bytes, size: int) -> bool:
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()).st_size == size and f.read(len(prefix)) == prefix
    except FileNotFoundError:
        return False


def _reserve(fd: int, size: int, path: Path) -> None:
    """Allocate the file's blocks now, so a full disk fails here and not in the middle of pass 2."""
    try:
        os.posix_fallocate(fd, 0, size)
    except AttributeError:  # pragma: no cover - not on Linux
        os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskSpaceError(f"{path}: not enough free disk space for {size:,} bytes") from None
        if exc.errno in (95, 22):  # EOPNOTSUPP, EINVAL: file system without fallocate
            os.ftruncate(fd, size)
        else:
            raise


class SafetensorsOutput:
    """A Hugging Face model folder (safetensors shards, index, side files) built in a staged directory."""

    def __init__(
        self,
        staging: StagedDirectory,
        tensors: Sequence[Tensor],
        shards: Sequence[ShardLayout],
        metadata: dict[str, str],
        *,
        direct: bool = True,
    ) -> None:
        self.staging = staging
        self.shards = tuple(shards)
        self._bounce = BounceBuffer() if direct else None
        by_name = {t.name: t for t in tensors}
        self._files: list[ShardWriter] = []
        self._writers: dict[str, ShardWriter] = {}
        try:
            for shard in shards:
                specs = [by_name[n] for n in shard.tensors]
                writer = ShardWriter(
                    staging.path / shard.file_name, specs, metadata, reopen=staging.resumed, bounce=self._bounce
                )
                self._files.append(writer)
                for name in shard.tensors:
                    self._writers[name] = writer
        except BaseException:
            self.close()
            raise

    @property
    def location(self) -> str:
        return str(self.staging.destination)

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (storage dtype) as elements ``start...`` of tensor ``name``."""
        self._writers[name].write(name, start, values)

    def patch(self, name: str, start: int, stop: int, at: np.ndarray, values: np.ndarray) -> None:
        """Overwrite single elements ``start + at`` of ``name`` (a few, scattered: one write each)."""
        self._writers[name].patch(name, start, at, values)

    def block_writer(self) -> FileRanges:
        """What writes blocks of every shard from another process (a cluster's worker)."""
        places = {name: place for w in self._files for name, place in w.block_writer().places.items()}
        return FileRanges(places, self._bounce is not None)

    def sync(self) -> None:
        """Wait until every block written so far is on disk."""
        for writer in self._files:
            writer.sync()

    def finish(self, files: Mapping[str, SideFileLike], recipe: dict[str, Any] | None = None) -> None:
        """Write the index, the side files (by relative POSIX path, sub-folders made as needed) and the
        recipe (``RECIPE_NAME``), and close the shards."""
        bad = next((name for name in files if clashes_with_output(name)), None)
        if bad is not None:
            raise ValueError(f"{bad!r} is not a side file: it would be hidden or clash with the weights or recipe")
        written = {name: as_side_file(item) for name, item in files.items()}
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                "weight_map": {name: s.file_name for s in self.shards for name in s.tensors},
            }
            written[INDEX_NAME] = SideFile.of_bytes((json.dumps(index, indent=2) + "\n").encode())
        if recipe is not None:
            written[RECIPE_NAME] = SideFile.of_bytes((json.dumps(recipe, indent=2) + "\n").encode())
        folders: set[Path] = set()
        for name, file in written.items():
            path = self.staging.path / name
            if path.parent != self.staging.path:
                path.parent.mkdir(parents=True, exist_ok=True)
                folders.update(p for p in path.parents if self.staging.path in p.parents)
            _write_file(path, file, durable=self.staging.durable)
        if self.staging.durable:
            for folder in sorted(folders, key=lambda p: -len(p.parts)):
                fsync_dir(folder)
        for writer in self._files:
            writer.close(durable=self.staging.durable)

    def close(self) -> None:
        """Close every file (after a failure or an interruption), even if closing one fails."""
        errors = []
        for writer in self._files:
            try:
                writer.close()
            except OSError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def _write_file(path: Path, file: SideFile, *, durable: bool) -> None:
    """Write ``file`` at ``path`` piece by piece (replacing what a resumed merge had written)."""
    with open(path, "wb") as f:
        for piece in file.pieces():
            f.write(piece)
        if durable:
            f.flush()
            os.fsync(f.fileno())
