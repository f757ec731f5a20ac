"""Pass 2 on a cluster's worker: a block merged for every merge that needs it, written by the worker.

:class:`RemoteMerge` is the task :mod:`ooc_ties.pass2` sends to a Dask cluster (:mod:`ooc_ties.cluster`):
it reads a block's inputs once, runs each merge's :class:`~ooc_ties.block_merge.BlockMerge` on them,
writes each output block itself (:mod:`ooc_ties.io.block_writer`), appends the recorded open elements to
the worker's own file (:func:`~ooc_ties.open_elements.append_records`), and sends back only small values
(:class:`BlockResult`), which the driver journals.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ooc_ties.block_merge import BlockMerge, out_storage
from ooc_ties.blocks import BlockRef
from ooc_ties.inputs import MergeInputs
from ooc_ties.io.block_writer import BlockWriter
from ooc_ties.kernels.report import magnitude_histogram
from ooc_ties.open_elements import RecordFile, append_records
from ooc_ties.report.collect import block_counts

__all__ = ["BlockResult", "RemoteMerge", "RemotePart"]


@dataclass(frozen=True, slots=True)
class RemotePart:
    """One merge's part of a pass-2 task on a cluster's worker."""

    block: BlockMerge
    """How its blocks are merged."""
    counted: frozenset[int]
    """Blocks whose kept values are counted (checked against pass 1's counts)."""
    writer: BlockWriter
    """Where its output blocks go."""
    report: bool
    """Whether its interference statistics are counted (``--report``)."""
    signs: BlockWriter | None
    """Where its elected signs go (``--save-signs``), if anywhere."""
    records: str | None
    """The folder the workers write their open-element records to (the staged output's state folder);
    ``None``: they travel back with the results."""
    count_only: frozenset[int] = frozenset()
    """Blocks an interrupted run merged: counted for the report of the resumed merge, not written."""


@dataclass(frozen=True, slots=True)
class BlockResult:
    """What a worker sends back for one block of one merge (its output is written already)."""

    votes: np.ndarray
    """#S>0, #S<0, open elements, open elements not recorded."""
    kept: np.ndarray
    """Per model, the values kept (empty where not counted)."""
    at: np.ndarray | None
    """The recorded open elements' indices within the block, if any."""
    alt: np.ndarray | None
    """Their results under the other sign."""
    record: RecordFile | None
    """Where the worker wrote them instead (``at`` and ``alt`` are then ``None``)."""
    report: tuple[np.ndarray, ...] | None
    """The block's interference counts (``--report``)."""


@dataclass(frozen=True, slots=True)
class RemoteMerge:
    """A pass-2 task for a cluster's worker: a block's inputs read once, merged for every merge that
    needs it, each output block written by the worker, and small values sent back in the worker's
    ``state`` (``{"blocks": {ordinal: (ref, {part: BlockResult})}, "magnitudes": {part: histograms}}``)."""

    inputs: MergeInputs
    parts: tuple[RemotePart, ...]
    needed: Mapping[int, tuple[int, ...]]
    """By block ordinal, the parts that merge it."""
    redoing: bool
    """Blocks merged again with exact majority signs: nothing recorded."""

    def __call__(self, ref: BlockRef, state: dict[str, Any]) -> None:
        base, fts = self.inputs.block(ref.tensor.name, ref.start, ref.stop)
        size = ref.stop - ref.start
        storage = out_storage(ref.tensor.out_dtype)
        results: dict[int, BlockResult] = {}
        for j in self.needed[ref.ordinal]:
            part = self.parts[j]
            block = part.block
            out = _scratch("out", size, storage)  # (written out before the next part reuses it)
            votes = np.zeros(4, np.int64)
            kept = np.zeros(block.n if ref.ordinal in part.counted else 0, np.int64)
            room = size if block.open_capacity else 0
            at, alt = _scratch("at", room, np.dtype(np.int64)), _scratch("alt", room, storage)
            counts: tuple[np.ndarray, ...] = ()
            if ref.ordinal in part.count_only:  # (merged into the scratch block, for its counts only)
                counts = block_counts(ref, _magnitudes(state, j, block.n), part.signs is not None)
                block.count(ref, base, fts, out, counts)
                if part.signs is not None:
                    part.signs.write(ref.tensor.name, ref.start, counts[1])
                results[j] = BlockResult(votes, kept[:0], None, None, None, counts[2:])
                continue
            if part.report and not self.redoing:  # (a block merged again is not counted again)
                counts = block_counts(ref, _magnitudes(state, j, block.n), part.signs is not None)
            recorded = block.merge(ref, base, fts, out, votes, kept, at, alt, redoing=self.redoing, counts=counts)
            part.writer.write(ref.tensor.name, ref.start, out)
            record = None
            if recorded and part.records is not None:
                record = append_records(part.records, at[:recorded], alt[:recorded])
            if counts and part.signs is not None:
                part.signs.write(ref.tensor.name, ref.start, counts[1])
            back = recorded and record is None
            results[j] = BlockResult(
                votes,
                kept,
                at[:recorded].copy() if back else None,
                alt[:recorded].copy() if back else None,
                record,
                counts[2:] if counts else None,
            )
        state.setdefault("blocks", {})[ref.ordinal] = (ref, results)
        self.inputs.release(ref.tensor.name, ref.start, ref.stop)


def _magnitudes(state: dict[str, Any], part: int, n_models: int) -> np.ndarray:
    """The worker's magnitude histograms of a merge (its ``part`` of the task), made on first use."""
    magnitudes = state.setdefault("magnitudes", {})
    if part not in magnitudes:
        magnitudes[part] = magnitude_histogram(n_models)
    histograms: np.ndarray = magnitudes[part]
    return histograms


_SCRATCH = threading.local()


def _scratch(name: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A worker thread's reusable buffer ``name`` of at least ``size`` elements of ``dtype`` (a fresh
    buffer per block costs a page fault per page: six times the system time, measured on the 1b shape)."""
    held: dict[tuple[str, str], np.ndarray] = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (name, dtype.str)
    buffer = held.get(key)
    if buffer is None or buffer.size < size:
        buffer = held[key] = np.empty(size, dtype)
    return buffer[:size]
