"""``convert``: copy a model between forms (safetensors file or folder, Zarr group) block by block.

Every tensor is copied in blocks of the engine's grid (at most ``block_elements`` elements), so memory
stays at a few blocks whatever the model's size; dtypes are kept bit for bit (BF16 as ``uint16`` bits
with the ``safetensors_dtype`` attribute in Zarr), and the side files travel along (every non-weight
file and sub-folder: :mod:`ooc_ties.io.side_files`; in Zarr, as :mod:`ooc_ties.io.zarr_format` lays
them out). Unlike a merge, ``convert`` writes no model card: a ``README.md`` is copied as it is. A Zarr
group written by ``convert`` is chunked on the engine's grid, so a merge reads it one chunk per block.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ooc_ties.chunk_grid import ChunkGrid
from ooc_ties.io.staging import StagedDirectory
from ooc_ties.io.writer import layout_shards
from ooc_ties.io.zarr_format import is_zarr_group
from ooc_ties.io.zarr_output import ChunkedSpec
from ooc_ties.outputs import OutputLike, check_output_path, open_output, output_format
from ooc_ties.plan import MAX_BLOCK_ELEMENTS
from ooc_ties.progress import ProgressFactory, progress_bar
from ooc_ties.resources import Resources
from ooc_ties.schedule import run_blocks
from ooc_ties.sources import SourceLike, open_source
from ooc_ties.tensor import Tensor

if TYPE_CHECKING:
    import zarr

__all__ = ["ConvertResult", "convert"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What a finished conversion did."""

    output: Path | None
    """The published folder or ``.zarr`` group; ``None`` when written into a given ``zarr.Group``."""
    tensors: int
    """Tensors copied."""
    nbytes: int
    """Bytes of tensor data copied."""
    seconds: float
    """Wall time."""


@dataclass(frozen=True, slots=True)
class _Block:
    name: str
    start: int
    stop: int
    nbytes: int


def convert(
    source: SourceLike,
    destination: OutputLike,
    resources: Resources | None = None,
    *,
    block_elements: int = MAX_BLOCK_ELEMENTS,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
) -> ConvertResult:
    """Copy every tensor of ``source`` to ``destination`` (a folder, a ``.zarr`` path or a ``zarr.Group``).

    ``resources`` gives the threads, the shard size of a safetensors output and ``durable`` (fsync
    before publishing); ``block_elements`` the largest block, which is also the Zarr chunk size.
    """
    started = time.perf_counter()
    resources = resources or Resources()
    with contextlib.ExitStack() as stack:
        opened = open_source(source, "<source>")
        if opened is not source:
            stack.callback(opened.close)
        grids = {n: ChunkGrid.for_block_size(opened.info(n).shape, block_elements) for n in opened.names}
        specs = [
            ChunkedSpec(Tensor(n, opened.info(n).dtype, opened.info(n).shape), grids[n].chunks) for n in opened.names
        ]
        total = sum(s.tensor.nbytes for s in specs)
        out_format = output_format(destination)
        target: StagedDirectory | zarr.Group
        if is_zarr_group(destination):
            target = destination
        else:
            path = Path(destination)
            check_output_path(path, opened.local_paths())
            staged = StagedDirectory(path, overwrite=overwrite, durable=resources.durable, nbytes=total)
            stack.callback(lambda: None if staged.done else staged.abort())
            target = staged
        shards = layout_shards([(s.tensor.name, s.tensor.nbytes) for s in specs], resources.shard_size)
        sink = open_output(target, specs, shards, {"format": "pt"}, out_format, direct=resources.direct_io)
        stack.callback(sink.close)
        blocks = [
            _Block(n, start, stop, (stop - start) * opened.info(n).dtype.itemsize)
            for n in opened.names
            for start, stop in grids[n].blocks()
        ]

        def copy(block: _Block, _: None) -> None:
            sink.write(block.name, block.start, opened.read(block.name, block.start, block.stop))
            opened.release(block.name, block.start, block.stop)

        with progress_bar(progress, "convert", total) as bar:
            run_blocks(blocks, copy, lambda: None, threads=resources.threads, cost=lambda b: b.nbytes, progress=bar)
        sink.finish(opened.side_files())
        published = target.commit() if isinstance(target, StagedDirectory) else None
    seconds = time.perf_counter() - started
    logger.info("converted %d tensors (%d bytes) in %.1f s", len(specs), total, seconds)
    return ConvertResult(published, len(specs), total, seconds)
