"""A model given as chunked or in-memory arrays: a Zarr group on any store, or NumPy arrays by name.

:class:`ArraySource` serves the same flat element ranges as a safetensors :class:`Checkpoint`, so the
merge runs on it unchanged. Reads decode through Zarr (or slice NumPy), so they are copies; a block of
the engine's grid is one rectangular selection, and an array chunked like the engine's grid (as
``ooc-ties convert`` and a merged Zarr output are) is read one whole chunk per block.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from ooc_ties.chunk_grid import flat_selection
from ooc_ties.errors import CheckpointFormatError, CheckpointNotFoundError, OptionError
from ooc_ties.identity import SourceIdentity, store_identity
from ooc_ties.io.reopen import reopened
from ooc_ties.io.side_files import SideFile, SideFileLike, as_side_file
from ooc_ties.io.zarr_format import FILES_GROUP, decode_files, dtype_of, is_zarr_array
from ooc_ties.tensor import Tensor

if TYPE_CHECKING:
    import zarr

__all__ = ["ArraySource", "is_zarr_path", "open_zarr_group"]

Array: TypeAlias = "np.ndarray | zarr.Array[Any]"


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a Zarr group: a URL, a ``.zip`` file, a ``*.zarr`` path or a folder with ``zarr.json``."""
    text = os.fspath(path)
    if "://" in text:
        return True
    p = Path(text)
    return p.suffix in (".zarr", ".zip") or (p.is_dir() and (p / "zarr.json").is_file())


def open_zarr_group(path: str | os.PathLike[str]) -> tuple[zarr.Group, Callable[[], None]]:
    """Open a Zarr v3 group read-only from a local folder, a ``.zip`` file or an fsspec URL."""
    import zarr  # (here, not at the top: a merge of safetensors files never pays for importing it)
    import zarr.storage

    text = os.fspath(path)
    store: Any
    if "://" in text:
        store = text
    else:
        p = Path(text)
        if not p.exists():
            raise CheckpointNotFoundError(f"{p}: no such file or folder")
        store = p
    try:
        if isinstance(store, Path) and p.suffix == ".zip":
            store = zarr.storage.ZipStore(p, mode="r")
        group = zarr.open_group(store, mode="r")
    except Exception as exc:  # zarr, zipfile and fsspec each raise their own kinds: one message for all
        raise CheckpointFormatError(f"{text}: cannot open as a Zarr v3 group ({type(exc).__name__}: {exc})") from None
    closer = store.close if isinstance(store, zarr.storage.ZipStore) else (lambda: None)
    return group, closer


def _members(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array[Any]]]:
    for name, node in group.members():
        if not prefix and name == FILES_GROUP:  # large side files, not tensors
            continue
        if is_zarr_array(node):
            yield prefix + name, node
        else:
            yield from _members(node, f"{prefix}{name}/")


def _local_root(group: zarr.Group) -> Path | None:
    import zarr.storage

    store = group.store
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root) / group.path if group.path else Path(store.root)
    if isinstance(store, zarr.storage.ZipStore):
        return Path(store.path)
    return None


def _files_under(root: Path) -> Iterator[tuple[str, Path]]:
    """Every file under ``root`` with its relative path, in a fixed order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            yield str(path.relative_to(root)), path


class ArraySource:
    """Named arrays (Zarr or NumPy) as a merge input; ``label`` names it in error messages."""

    def __init__(
        self,
        arrays: Mapping[str, Array],
        label: str,
        *,
        side_files: Mapping[str, SideFileLike] | None = None,
        root: Path | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.label = label
        self._arrays: dict[str, Array] = {}
        self._info: dict[str, Tensor] = {}
        self._side_files = {name: as_side_file(item) for name, item in (side_files or {}).items()}
        self._root = root
        self._closer = closer
        self._identity: SourceIdentity | None = None
        self._opened_from: str | None = None
        """The path or URL :meth:`open` opened (how a copy for another process opens it again)."""
        self._group: zarr.Group | None = None
        """The group :meth:`from_zarr` read (a copy for another process reads it through its store)."""
        for name in sorted(arrays):
            array = arrays[name]
            if not isinstance(name, str):
                raise CheckpointFormatError(f"{label}: tensor names must be strings, got {name!r}")
            if is_zarr_array(array):
                storage, attributes = np.dtype(array.dtype), dict(array.attrs)
            elif isinstance(array, np.ndarray):
                storage, attributes = array.dtype, {}
            else:
                raise CheckpointFormatError(
                    f"{label}: tensor {name!r} is a {type(array).__name__}, not a NumPy or Zarr array"
                )
            dtype = dtype_of(storage, attributes, f"{label}: tensor {name!r}")
            self._arrays[name] = array
            self._info[name] = Tensor(name, dtype, tuple(int(s) for s in array.shape))
        self.names: tuple[str, ...] = tuple(self._info)

    @classmethod
    def from_zarr(
        cls, group: zarr.Group, label: str | None = None, closer: Callable[[], None] | None = None
    ) -> ArraySource:
        """Every array of ``group`` (nested groups joined with ``/``), with its side files."""
        label = label or str(group.store_path)
        files = decode_files(group, label)
        try:
            members = dict(_members(group))
        except Exception as exc:  # a node's metadata is missing or malformed: zarr raises many kinds
            raise CheckpointFormatError(
                f"{label}: cannot read the group's arrays ({type(exc).__name__}: {exc})"
            ) from None
        source = cls(members, label, side_files=files, root=_local_root(group), closer=closer)
        source._group = group
        return source

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ArraySource:
        """A Zarr group at a local path, ``.zip`` file or fsspec URL (see :func:`open_zarr_group`)."""
        group, closer = open_zarr_group(path)
        try:
            source = cls.from_zarr(group, os.fspath(path), closer)
        except BaseException:
            closer()
            raise
        source._opened_from = os.fspath(path)
        return source

    def __contains__(self, name: object) -> bool:
        return name in self._info

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def info(self, name: str) -> Tensor:
        return self._info[name]

    def where(self, name: str) -> str:
        return f"{self.label}: tensor {name!r}"

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Flat elements ``[start, stop)`` in storage dtype (BF16 as ``uint16`` bits)."""
        info = self._info[name]
        array = self._arrays[name]
        stop = info.numel if stop is None else stop
        storage = info.dtype.storage
        if stop <= start:
            empty = np.empty(0, storage)
            empty.flags.writeable = False
            return empty
        found = flat_selection(info.shape, start, stop)
        try:
            if found is not None:
                values = np.asarray(array[found[0]])
            else:  # any other range: the whole leading-axis rows that hold it
                inner = info.numel // info.shape[0]
                first, last = start // inner, -(-stop // inner)
                values = np.asarray(array[first:last]).reshape(-1)[start - first * inner : stop - first * inner]
        except Exception as exc:  # a missing, truncated or undecodable chunk: zarr and its codecs raise many kinds
            raise CheckpointFormatError(
                f"{self.where(name)}: cannot read elements [{start}, {stop}) ({type(exc).__name__}: {exc})"
            ) from None
        flat = values.reshape(-1)
        if flat.dtype.name == "bfloat16" or flat.dtype.itemsize != storage.itemsize or flat.dtype.kind != storage.kind:
            flat = flat.view(storage)
        out = np.ascontiguousarray(flat, dtype=storage)
        out.flags.writeable = False  # like a memory-map view: the kernels take one array type for all inputs
        return out

    def release(self, name: str, start: int, stop: int) -> None:
        """Nothing to release: reads are copies."""

    def identity(self) -> SourceIdentity | None:
        """A local store's identity (see :mod:`ooc_ties.identity`); ``None`` for other stores and arrays.

        Computed once per open source (a large store has many chunk files to stat)."""
        if self._root is None:
            return None
        if self._identity is None:
            if self._root.is_file():  # a .zip store
                self._identity = SourceIdentity.of_files(self.label, [self._root])
            else:
                self._identity = store_identity(self.label, self._root, list(_files_under(self._root)))
        return self._identity

    def local_paths(self) -> list[Path]:
        return [self._root] if self._root is not None else []

    def side_files(self) -> dict[str, SideFile]:
        return dict(self._side_files)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __repr__(self) -> str:
        return f"ArraySource({self.label!r}, {len(self.names)} arrays)"

    def __reduce__(self) -> tuple[object, ...]:
        # A copy for another process (a cluster's worker) opens the store again there (:mod:`.reopen`);
        # arrays in this process's memory cannot be read by another.
        if self._opened_from is None and self._group is not None and not _in_memory(self._group):
            return (ArraySource.from_zarr, (self._group, self.label))
        if self._opened_from is None:
            raise OptionError(
                f"{self.label}: arrays in this process's memory cannot be read by a cluster's workers; "
                "give the input as a path or URL every worker can open"
            )
        return (_reopen, (self._opened_from, self.identity()))


def _reopen(spec: str, identity: SourceIdentity | None) -> ArraySource:
    return reopened(ArraySource.open, spec, identity, ArraySource.identity)


def _in_memory(group: zarr.Group) -> bool:
    import zarr.storage

    return isinstance(group.store, zarr.storage.MemoryStore)
