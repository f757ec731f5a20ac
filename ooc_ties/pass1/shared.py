"""Shared reads: the pass 1 of several merges of the same inputs, run in lockstep, each round one read.

Every merge of a grid runs its own, unchanged pass 1 (:func:`~ooc_ties.pass1.run.compute_thresholds`)
on a thread of its own; its :class:`~ooc_ties.pass1.scan.Scan` hands each read to the function
:meth:`SharedReads.reader` gives it, and waits. When every merge still running has handed in its next
read, the driver (:meth:`SharedReads.serve`, on the calling thread) serves those that start earliest in
the model (the others wait for a later round) with one read of the union of their blocks: each block's
inputs are read once, and every merge that asked for the block runs its kernel on them, into a state of
its own. Each merge gets exactly the states its own read would have given (integer sums, in any order),
so its results are those of a merge alone.

Merges whose pass 1 reads the same blocks (any densities, lambdas, weights or seeds under one scope and
method) read the inputs as often as the most demanding of them; serving the earliest reads first keeps
per-tensor merges, whose reads drift apart when one needs a read another does not, at the same tensor.
Merges of other scopes or methods share the reads that coincide.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ooc_ties.blocks import BlockRef
from ooc_ties.executor import Executor
from ooc_ties.inputs import MergeInputs
from ooc_ties.pass1.scan import BlockWork, Reader, in_nbytes
from ooc_ties.progress import Progress

__all__ = ["SharedReads"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    """One merge's next read, and (once served) its states or the error that stopped it."""

    label: str
    blocks: Sequence[BlockRef]
    work: BlockWork
    new_state: Callable[[], Any]
    states: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class _UnionRead:
    """One round's task: a block's inputs read once, and every party that asked for it runs its work on
    them, into a state of its own (a worker's ``{party: state}``). It pickles, for a cluster's workers."""

    inputs: MergeInputs
    wanted: dict[int, list[tuple[int, BlockRef]]]
    """By block ordinal: the parties that asked for it, each with its own ``BlockRef``."""
    works: dict[int, tuple[BlockWork, Callable[[], Any]]]
    """By party: its work and state factory."""

    def __call__(self, head: BlockRef, states: dict[int, Any]) -> None:
        base, fts = self.inputs.block(head.tensor.name, head.start, head.stop)
        for party, ref in self.wanted[head.ordinal]:
            work, new_state = self.works[party]
            state = states.get(party)
            if state is None:
                state = states[party] = new_state()
            work(ref, base, fts, state)
        self.inputs.release(head.tensor.name, head.start, head.stop)


class SharedReads:
    """Serves the reads of ``parties`` pass-1 runs over the same ``inputs`` together (module docstring).

    Each party calls :meth:`reader` once for its ``Scan`` and :meth:`leave` when its pass 1 ends (also on
    failure); the driver calls :meth:`serve` until every party has left.
    """

    def __init__(self, inputs: MergeInputs, executor: Executor, parties: int, bar: Progress | None) -> None:
        self.inputs = inputs
        self.executor = executor
        self.bar = bar
        self.bytes_read = 0
        """Input bytes read: each block once per round, however many parties asked for it."""
        self.requested = 0
        """Input bytes the parties' reads would have read alone."""
        self._active = parties
        self._pending: dict[int, _Request] = {}
        self._cond = threading.Condition()
        self._planned = 0
        self._stopped: BaseException | None = None

    def reader(self, party: int) -> Reader:
        """The read function of party ``party`` (for its ``Scan``)."""

        def read(label: str, blocks: Sequence[BlockRef], work: BlockWork, new_state: Callable[[], Any]) -> list[Any]:
            request = _Request(label, blocks, work, new_state)
            with self._cond:
                if self._stopped is not None:
                    raise self._stopped
                self._pending[party] = request
                self._cond.notify_all()
                while not request.done:
                    self._cond.wait()
            if request.error is not None:
                raise request.error
            return request.states

        return read

    def leave(self) -> None:
        """A party's pass 1 has ended."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def serve(self) -> None:
        """Make each round's read until every party has left."""
        while True:
            with self._cond:
                while self._active and len(self._pending) < self._active:
                    self._cond.wait()
                if not self._active:
                    return
                batch = self._next_round()
            try:
                self._read(batch)
            except BaseException as error:  # every party of the round stops with the error
                for request in batch.values():
                    request.error = error
            with self._cond:
                for request in batch.values():
                    request.done = True
                self._cond.notify_all()

    def _next_round(self) -> dict[int, _Request]:
        """The pending reads served in this round: those that start at the earliest block. The others
        wait, so that merges working through the model group by group (per-tensor scope), whose reads
        drift apart when one needs a read another does not, meet again at the same tensor."""

        def first(request: _Request) -> int:
            return min((ref.ordinal for ref in request.blocks), default=-1)

        earliest = min(first(r) for r in self._pending.values())
        batch = {party: r for party, r in self._pending.items() if first(r) == earliest}
        for party in batch:
            del self._pending[party]
        return batch

    def _read(self, batch: dict[int, _Request]) -> None:
        wanted: dict[int, list[tuple[int, BlockRef]]] = {}
        for party, request in sorted(batch.items()):
            self.requested += sum(b.in_nbytes for b in request.blocks)
            for ref in request.blocks:
                wanted.setdefault(ref.ordinal, []).append((party, ref))
        order = sorted(wanted)
        first = [wanted[o][0][1] for o in order]
        nbytes = sum(ref.in_nbytes for ref in first)
        logger.debug(
            "pass 1: one read of %d blocks for %s",
            len(first),
            "; ".join(f"{r.label} ({len(r.blocks)} blocks)" for _, r in sorted(batch.items())),
        )
        if self.bar is not None and self.bytes_read + nbytes > self._planned:
            self.bar.grow(self.bytes_read + nbytes - self._planned)
            self._planned = self.bytes_read + nbytes
        self.bytes_read += nbytes

        task = _UnionRead(self.inputs, wanted, {p: (r.work, r.new_state) for p, r in batch.items()})
        workers = self.executor.map(first, task, dict, cost=in_nbytes, progress=self.bar)
        for party, request in batch.items():
            request.states = [w[party] for w in workers if party in w]

    def stop(self, error: BaseException) -> None:
        """The driver stopped (an interruption): every waiting and later read raises ``error``."""
        with self._cond:
            self._stopped = error
            for request in self._pending.values():
                request.error, request.done = error, True
            self._pending = {}
            self._cond.notify_all()

    def plan(self, nbytes: int) -> None:
        """Set the progress total to the reads expected (grown, as a merge's own is, by reads beyond it)."""
        self._planned = nbytes

    def finish(self) -> None:
        """Count expected reads that were not needed as done, so the progress bar ends at its total."""
        if self.bar is not None and self._planned > self.bytes_read:
            self.bar.advance(self._planned - self.bytes_read)
