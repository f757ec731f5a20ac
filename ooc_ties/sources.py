"""What a merge reads: the :class:`TensorSource` protocol, and opening one from what the caller gives.

A source is a set of named tensors that can be read by flat element ranges (C order), in a storage
dtype (BF16 as ``uint16`` bits). Two kinds exist:

- :class:`~ooc_ties.io.checkpoint.Checkpoint`: a safetensors file or Hugging Face folder, memory-mapped,
  read zero-copy;
- :class:`~ooc_ties.io.arrays.ArraySource`: Zarr arrays on any store, or NumPy arrays, by name.

:func:`open_source` accepts a path (a safetensors file or folder, a Zarr folder, ``.zarr``, ``.zip``
or an fsspec URL), a Hugging Face Hub ID already in the local cache (``org/name[@revision]``, see
:mod:`ooc_ties.io.hub`), a ``zarr.Group``, a mapping of names to NumPy or Zarr arrays, or a source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from ooc_ties.dtypes import DType
from ooc_ties.errors import OptionError
from ooc_ties.identity import SourceIdentity
from ooc_ties.io.arrays import ArraySource, is_zarr_path
from ooc_ties.io.checkpoint import Checkpoint
from ooc_ties.io.hub import cached_snapshot, parse_hub_id
from ooc_ties.io.side_files import SideFile
from ooc_ties.io.zarr_format import is_zarr_group

if TYPE_CHECKING:
    import zarr

__all__ = ["SourceLike", "TensorMeta", "TensorSource", "open_source"]


class TensorMeta(Protocol):
    """What the merge needs to know of one tensor before reading it."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> DType: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def numel(self) -> int: ...
    @property
    def nbytes(self) -> int: ...


@runtime_checkable
class TensorSource(Protocol):
    """Named tensors, read by flat element ranges."""

    names: tuple[str, ...]
    """Every tensor, sorted by name (the order every pass walks them in)."""

    @property
    def label(self) -> str:
        """How error messages name the source (its path, or a description)."""
        ...

    def __contains__(self, name: object) -> bool: ...

    def info(self, name: str) -> TensorMeta: ...

    def where(self, name: str) -> str:
        """``"<source>: tensor '<name>'"``, the prefix of every error about this tensor."""
        ...

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Flat elements ``[start, stop)`` in storage dtype; a view or a copy, never to be written."""
        ...

    def release(self, name: str, start: int, stop: int) -> None:
        """Done with ``[start, stop)``: drop whatever reading it holds (memory-map pages)."""
        ...

    def identity(self) -> SourceIdentity | None:
        """What the source reads, cheaply told apart from other data (see :mod:`ooc_ties.identity`);
        ``None`` if nothing cheap can tell (arrays in memory, remote stores)."""
        ...

    def local_paths(self) -> list[Path]:
        """Local files or folders the source reads (an output must not lie inside them)."""
        ...

    def side_files(self) -> Mapping[str, SideFile]:
        """The files that go with the tensors (config, tokenizer, ...; no weights), by relative POSIX path."""
        ...

    def close(self) -> None: ...


SourceLike: TypeAlias = (
    "str | os.PathLike[str] | TensorSource | zarr.Group | Mapping[str, np.ndarray | zarr.Array[Any]]"
)
"""Anything :func:`open_source` accepts."""


def open_source(spec: SourceLike, label: str | None = None) -> TensorSource:
    """Open ``spec`` as a :class:`TensorSource` (the caller closes it).

    Paths: a Zarr group when :func:`~ooc_ties.io.arrays.is_zarr_path` says so, else a safetensors file
    or Hugging Face folder. A string that names no existing path but looks like a Hub ID is the snapshot
    of that model in the local Hugging Face cache; nothing is downloaded. ``label`` names in-memory
    inputs in error messages.
    """
    if isinstance(spec, TensorSource):
        return spec
    if is_zarr_group(spec):
        return ArraySource.from_zarr(spec, label)
    if isinstance(spec, (str, os.PathLike)):
        if is_zarr_path(spec):
            return ArraySource.open(spec)
        hub_id = parse_hub_id(spec) if isinstance(spec, str) and not os.path.lexists(spec) else None
        return Checkpoint(spec if hub_id is None else cached_snapshot(hub_id))
    if isinstance(spec, Mapping):
        return ArraySource(spec, label or "<arrays>")
    raise OptionError(
        f"cannot read a model from a {type(spec).__name__}: give a path, a zarr.Group or a mapping of arrays"
    )
