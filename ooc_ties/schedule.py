"""Run block tasks on a pool of threads.

Kernels release the GIL, so plain threads use every core. A pass is a list of independent block tasks;
each worker thread owns one accumulator (a histogram, a counter, scratch space), created by
``new_state`` and handed to every task the worker runs. Accumulators only ever *add* integers, so
combining them in any order gives the same result as a sequential run: the output never depends on how
blocks were spread over threads. Any scheduler that runs ``task(item, state)`` and sums the states (Dask,
a process pool) computes the same thing. (Pass 2's output writes go through a ``WriteQueue`` shared by
the threads of one process; another scheduler would write each block from its task.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

from ooc_ties.progress import Progress

__all__ = ["run_blocks"]

Item = TypeVar("Item")
State = TypeVar("State")


class _Worker(Generic[State]):
    def __init__(self, new_state: Callable[[], State]) -> None:
        self._new_state = new_state
        self._local = threading.local()
        self.states: list[State] = []
        self._lock = threading.Lock()

    def state(self) -> State:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._new_state()
            self._local.state = state
            with self._lock:
                self.states.append(state)
        return state


def run_blocks(
    items: Sequence[Item],
    task: Callable[[Item, State], None],
    new_state: Callable[[], State],
    *,
    threads: int,
    cost: Callable[[Item], int] = lambda item: 1,
    progress: Progress | None = None,
) -> list[State]:
    """Run ``task(item, state)`` for every item on ``threads`` threads; return the worker states.

    ``cost(item)`` (bytes read, say) feeds ``progress``. The first exception stops the run: tasks not
    yet started are cancelled, running ones finish, and the exception is raised here.
    """
    worker: _Worker[State] = _Worker(new_state)

    def run(item: Item) -> None:
        task(item, worker.state())

    if threads == 1:
        for item in items:
            run(item)
            if progress is not None:
                progress.advance(cost(item))
        return worker.states

    window = 4 * threads  # tasks in flight: enough to keep every thread busy, few to cancel on error
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ooc-ties") as pool:
        pending: dict[Future[None], int] = {}
        try:
            for position, item in enumerate(items):
                pending[pool.submit(run, item)] = position
                while len(pending) >= window:
                    _drain(pending, items, progress, cost)
            while pending:
                _drain(pending, items, progress, cost)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return worker.states


def _drain(
    pending: dict[Future[None], int], items: Sequence[Item], progress: Progress | None, cost: Callable[[Item], int]
) -> None:
    """Wait for some tasks; on failure wait for all in flight and raise the earliest item's error."""
    done, _ = wait(list(pending), return_when=FIRST_EXCEPTION)
    if any(f.exception() is not None for f in done):
        wait(list(pending))
        failed = sorted((pending[f], f) for f in pending if not f.cancelled() and f.exception() is not None)
        pending.clear()
        raise failed[0][1].exception()  # type: ignore[misc]
    for future in done:
        position = pending.pop(future)
        if progress is not None:
            progress.advance(cost(items[position]))
