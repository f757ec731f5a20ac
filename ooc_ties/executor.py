"""Executors: where the block tasks of a pass run — this process's threads, or a Dask cluster.

Every read of the engine is a list of block tasks ``task(item, state)``, each adding into a worker's
accumulator ``state`` (histograms, counters, per-block counts), and the driver combines the
accumulators it gets back. Accumulators only ever add integers (or keep per-block values by block
ordinal), so the result does not depend on how the items were spread: a thread pool and a cluster of
processes compute the same bytes.

* :class:`Threads` runs the tasks on this process's threads (:func:`~ooc_ties.schedule.run_blocks`):
  one accumulator per thread.
* :class:`~ooc_ties.cluster.DaskExecutor` sends them to a Dask cluster: one accumulator per batch of
  items, the task and the accumulator's factory sent to each worker once, the accumulators sent back.
  A task sent there must pickle: it names its inputs by path or URL and its parameters by value, and
  changes nothing but its accumulator (:mod:`ooc_ties.cluster`).

:func:`executor_for` picks one from :class:`~ooc_ties.resources.Resources`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ooc_ties.progress import Progress
from ooc_ties.schedule import run_blocks

if TYPE_CHECKING:
    from ooc_ties.resources import Resources

__all__ = ["Executor", "Threads", "executor_for"]

Item = TypeVar("Item")
State = TypeVar("State")


class Executor(Protocol):
    """Runs a pass's block tasks."""

    @property
    def remote(self) -> bool:
        """Whether tasks run in other processes (so they must pickle, and write their own outputs)."""
        ...

    def map(
        self,
        items: Sequence[Item],
        task: Callable[[Item, State], None],
        new_state: Callable[[], State],
        *,
        cost: Callable[[Item], int],
        progress: Progress | None,
    ) -> list[State]:
        """Run ``task(item, state)`` for every item; return the accumulators (``cost`` feeds ``progress``).
        The first failure stops the run and is raised here."""
        ...

    def stream(
        self,
        items: Sequence[Item],
        task: Callable[[Item, State], None],
        new_state: Callable[[], State],
        collect: Callable[[State], None],
        *,
        cost: Callable[[Item], int],
        progress: Progress | None,
    ) -> None:
        """Like :meth:`map`, but each accumulator goes to ``collect`` on this (the driver's) process as
        soon as its items are done (a pass that journals its blocks as they finish)."""
        ...


@dataclass(frozen=True, slots=True)
class Threads:
    """This process's threads (kernels release the GIL, so threads use every core)."""

    threads: int
    """How many."""

    @property
    def remote(self) -> bool:
        return False

    def map(
        self,
        items: Sequence[Item],
        task: Callable[[Item, State], None],
        new_state: Callable[[], State],
        *,
        cost: Callable[[Item], int],
        progress: Progress | None,
    ) -> list[State]:
        return run_blocks(items, task, new_state, threads=self.threads, cost=cost, progress=progress)

    def stream(
        self,
        items: Sequence[Item],
        task: Callable[[Item, State], None],
        new_state: Callable[[], State],
        collect: Callable[[State], None],
        *,
        cost: Callable[[Item], int],
        progress: Progress | None,
    ) -> None:
        def run(item: Item, _: None) -> None:  # (one accumulator per item, collected on its thread)
            state = new_state()
            task(item, state)
            collect(state)

        run_blocks(items, run, lambda: None, threads=self.threads, cost=cost, progress=progress)


def executor_for(resources: Resources) -> Executor:
    """The executor ``resources`` ask for: a connected Dask client's cluster, or this process's threads.

    A cluster given as an address (``tcp://...``, ``local:N``) must have been connected first
    (:func:`ooc_ties.cluster.connected`, which the merge entry points use)."""
    cluster: Any = resources.cluster
    if cluster is None:
        return Threads(resources.threads)
    from ooc_ties.cluster import DaskExecutor  # (only with the [dask] extra)

    return DaskExecutor.of(cluster)
