"""A scan: one of pass 1's reads, a kernel run over some blocks of the inputs by the plan's executor.

Every read of pass 1 (histograms, tie counts, sign votes) goes through :meth:`Scan.run`, which counts
the bytes read (a merge reports them), grows the progress bar when a read goes beyond the ones pass 1
expected (:mod:`ooc_ties.pass1.costs`), and hands each worker its own accumulator
(:mod:`ooc_ties.executor`: this process's threads or a Dask cluster). A read's work must therefore
change nothing but its accumulator, and pickle. In a grid of merges, the scans of every merge hand their reads
to one :class:`~ooc_ties.pass1.shared.SharedReads`, which makes each round of them one read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.errors import NonFiniteValueError
from ooc_ties.executor import Executor, executor_for
from ooc_ties.inputs import MergeInputs
from ooc_ties.plan import MergePlan
from ooc_ties.progress import Progress
from ooc_ties.tensor_weights import TensorWeights

__all__ = ["BlockRead", "BlockWork", "Reader", "Scan", "in_nbytes"]

logger = logging.getLogger(__name__)

BlockWork = Callable[[BlockRef, np.ndarray, tuple[np.ndarray, ...], Any], None]
"""``work(ref, base, fts, state)``: a kernel over one block's inputs, adding into a worker's ``state``."""


@dataclass(frozen=True, slots=True)
class BlockRead:
    """A read's task: a block's inputs read, ``work`` run on them, their pages released. It pickles
    (the inputs travel as their paths: :mod:`ooc_ties.io.reopen`), so a cluster's worker can run it."""

    inputs: MergeInputs
    """What is read."""
    work: BlockWork
    """What runs on each block."""

    def __call__(self, ref: BlockRef, state: Any) -> None:
        base, fts = self.inputs.block(ref.tensor.name, ref.start, ref.stop)
        self.work(ref, base, fts, state)
        self.inputs.release(ref.tensor.name, ref.start, ref.stop)


def in_nbytes(ref: BlockRef) -> int:
    """A block's input bytes (the cost of reading it)."""
    return ref.in_nbytes


class Reader(Protocol):
    """Runs a read: ``work`` on every block's inputs; returns the worker states."""

    def __call__(
        self, label: str, blocks: Sequence[BlockRef], work: BlockWork, new_state: Callable[[], Any]
    ) -> list[Any]: ...


class Scan:
    """Runs pass 1's reads of one merge's inputs and accounts for them."""

    def __init__(
        self, plan: MergePlan, inputs: MergeInputs, bar: Progress | None, reader: Reader | None = None
    ) -> None:
        self.plan = plan
        self._reader = reader or self._read
        self.inputs = inputs
        self.bar = bar
        self.bytes_read = 0
        self.budget = 0
        """Bytes the progress total covers: read so far, and what the current group is expected to read."""
        self.n = plan.n_models
        self.threads = plan.resources.threads
        self.weights = TensorWeights(plan.options, self.n)
        """Each tensor's float32 weights."""
        self.executor: Executor = executor_for(plan.resources)

    def run(
        self,
        label: str,
        blocks: Sequence[BlockRef],
        work: BlockWork,
        new_state: Callable[[], Any],
    ) -> list[Any]:
        """Run ``work(ref, base, fts, state)`` on every block's inputs; return the worker states."""
        logger.debug("pass 1: %s over %d blocks", label, len(blocks))
        nbytes = sum(b.in_nbytes for b in blocks)
        if self.bar is not None and self.bytes_read + nbytes > self.budget:  # a read beyond the expected ones
            self.bar.grow(self.bytes_read + nbytes - self.budget)
            self.budget = self.bytes_read + nbytes
        self.bytes_read += nbytes
        return self._reader(label, blocks, work, new_state)

    def _read(self, label: str, blocks: Sequence[BlockRef], work: BlockWork, new_state: Callable[[], Any]) -> list[Any]:
        """A read of this scan's own."""
        return self.executor.map(blocks, BlockRead(self.inputs, work), new_state, cost=in_nbytes, progress=self.bar)

    def __getstate__(self) -> dict[str, Any]:
        # A copy inside a task sent to a cluster's worker: what the kernels' work needs (the plan, the
        # inputs, which reopen there), not the driver's progress bar, reader or executor.
        state = dict(self.__dict__)
        state.update(bar=None, _reader=None, executor=None)
        return state

    def check_finite(self, ref: BlockRef, bad: np.ndarray) -> None:
        for t in range(self.n):
            if bad[t] >= 0:
                index = ref.start + int(bad[t])
                raise NonFiniteValueError(self.inputs.describe_nonfinite(ref.tensor.name, index, t))
