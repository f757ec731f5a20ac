"""Where results are written: a safetensors model folder or a Zarr v3 group, behind one interface.

:func:`open_output` builds either inside a :class:`~ooc_ties.io.staging.StagedDirectory` (a local
destination, published by one rename) or, for Zarr, into a ``zarr.Group`` the caller owns. The merge
and ``convert`` write blocks through :class:`Output` without knowing which.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np

from ooc_ties.errors import OptionError, OutputPathError
from ooc_ties.io.block_writer import BlockWriter, NoWrites
from ooc_ties.io.side_files import SideFileLike
from ooc_ties.io.staging import StagedDirectory
from ooc_ties.io.writer import SafetensorsOutput, ShardLayout
from ooc_ties.io.zarr_format import is_zarr_group
from ooc_ties.io.zarr_output import ChunkedSpec, ZarrOutput

if TYPE_CHECKING:
    import zarr

__all__ = ["NullOutput", "Output", "OutputLike", "check_output_path", "open_output", "output_format"]

OutputLike: TypeAlias = "str | os.PathLike[str] | zarr.Group"
"""A folder path (safetensors), a ``*.zarr`` path (Zarr v3 group), or a ``zarr.Group`` written in place."""


class Output(Protocol):
    """What blocks are written into."""

    @property
    def location(self) -> str: ...

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` (storage dtype) as flat elements ``start...`` of tensor ``name``."""
        ...

    def patch(self, name: str, start: int, stop: int, at: np.ndarray, values: np.ndarray) -> None:
        """Overwrite elements ``start + at`` of the block ``[start, stop)`` of ``name`` with ``values``."""
        ...

    def block_writer(self) -> BlockWriter:
        """What writes whole blocks of this output from another process (a cluster's worker)."""
        ...

    def sync(self) -> None:
        """Wait until everything written so far is on disk."""
        ...

    def finish(self, files: Mapping[str, SideFileLike], recipe: dict[str, Any] | None = None) -> None:
        """Add the side files (by relative POSIX path: :mod:`ooc_ties.io.side_files`) and the recipe;
        after this only publishing is left."""
        ...

    def close(self) -> None: ...


def output_format(output: OutputLike) -> str:
    """``"zarr"`` for a ``zarr.Group`` or a path ending in ``.zarr``, else ``"safetensors"``."""
    if is_zarr_group(output) or Path(output).suffix == ".zarr":
        return "zarr"
    return "safetensors"


def open_output(
    target: StagedDirectory | zarr.Group,
    tensors: Sequence[ChunkedSpec],
    shards: Sequence[ShardLayout],
    metadata: dict[str, str],
    out_format: str,
    *,
    direct: bool = True,
) -> Output:
    """The writer of ``tensors`` in ``out_format`` (``shards``, ``metadata`` and ``direct``, writing
    whole pages with ``O_DIRECT``, apply to safetensors)."""
    if out_format == "zarr":
        return ZarrOutput(target, tensors)
    if not isinstance(target, StagedDirectory):
        raise OptionError("a safetensors output needs a folder path, not a zarr.Group")
    return SafetensorsOutput(target, [t.tensor for t in tensors], shards, metadata, direct=direct)


def check_output_path(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output that is an input, lies inside one, or contains one."""
    out = output.resolve()
    for source in inputs:
        src = source.resolve()
        if out == src or src in out.parents:
            raise OutputPathError(f"{output}: the output must not be an input or lie inside one ({source})")
        if out in src.parents:
            raise OutputPathError(f"{output}: the output must not contain an input ({source})")


class NullOutput:
    """An output that keeps nothing: a merge run for its statistics only (``ooc-ties analyze``)."""

    @property
    def location(self) -> str:
        return "(no output)"

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        pass

    def patch(self, name: str, start: int, stop: int, at: np.ndarray, values: np.ndarray) -> None:
        pass

    def block_writer(self) -> BlockWriter:
        return NoWrites()

    def sync(self) -> None:
        pass

    def finish(self, files: Mapping[str, SideFileLike], recipe: dict[str, Any] | None = None) -> None:
        pass

    def close(self) -> None:
        pass
