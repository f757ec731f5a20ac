"""Running a merge's block tasks on a Dask cluster (``--cluster``, ``Resources(cluster=...)``).

The driver (the process that called :func:`~ooc_ties.merge.merge`) plans, keeps the journal, corrects
majority signs and publishes; the cluster's workers read the input blocks themselves (from paths or
URLs every worker can open), run the same kernels, write their output blocks themselves (into the
staged output on a shared file system, or a Zarr store), and send back only small values: histogram
counts, votes, kept counts, a block's open elements. Input and output blocks never travel through the
scheduler or the driver.

A task that fails because its worker died runs again on another worker (Dask retries it), and writes
the same bytes: every task is a pure function of its block and parameters. docs/distributed.md has the
whole picture.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ooc_ties.errors import ClusterError, OocTiesError, OptionError
from ooc_ties.progress import Progress

if TYPE_CHECKING:
    from ooc_ties.resources import Resources

__all__ = ["DaskExecutor", "connected", "parse_cluster"]

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
State = TypeVar("State")

_SCHEMES = ("tcp://", "tls://", "ws://", "wss://", "ucx://", "inproc://")

CONNECT_TIMEOUT = 30
"""Seconds to wait for a scheduler before giving up with a one-line error."""

TASKS_PER_THREAD = 4
"""Batches per worker thread in one read: enough to balance the load, few enough that each batch's
round trip to the scheduler (a few milliseconds) stays small beside its work."""

WAIT_STEP = 5
"""Seconds between checks that the cluster still has workers, while tasks are pending."""

POLL = 0.01
"""Seconds between looks for finished tasks (a batch takes seconds)."""

NO_WORKERS_TIMEOUT = 120
"""Seconds a merge waits for a worker when its cluster has none left (lost nodes, a scaled-down
deployment) before it stops with a one-line error; its journal keeps the blocks already merged."""

BATCH_BYTES = 512 * 1024**2
"""Largest input bytes of one batch, so that a batch lost with its worker costs little to run again."""


def parse_cluster(value: str) -> str:
    """Check a ``--cluster`` value: ``local``, ``local:N`` (a local cluster of N worker processes) or a
    scheduler address (``tcp://host:port``, ``tls://...``)."""
    text = value.strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and not (count.isdigit() and int(count) > 0):
            raise OptionError(f"--cluster {value!r}: expected local:N with N a positive number of workers")
        return text
    if text.startswith(_SCHEMES):
        return text
    raise OptionError(
        f"--cluster {value!r}: expected a scheduler address (tcp://host:8786) or local:N "
        "(a local cluster of N worker processes)"
    )


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise OptionError("running on a Dask cluster needs the dask extra: pip install 'ooc-ties[dask]'") from None
    return distributed


@contextmanager
def connected(resources: Resources) -> Iterator[Resources]:
    """``resources`` with their cluster connected: an address becomes a ``distributed.Client`` for the
    duration (a ``local:N`` cluster is started, and stopped after); a client or ``None`` passes through."""
    cluster = resources.cluster
    if not isinstance(cluster, str):
        yield resources
        return
    distributed = _distributed()
    spec = parse_cluster(cluster)
    local = None
    try:
        if spec.startswith("local"):
            workers = int(spec.partition(":")[2] or os.cpu_count() or 1)
            # One thread per worker process: a worker's memory is then one block task's (the plan's
            # per-thread share of the budget), and the processes use the cores.
            local = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=0,
            )
            client = distributed.Client(local, set_as_default=False)
        else:
            client = distributed.Client(spec, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        if local is not None:
            local.close()
        raise ClusterError(f"--cluster {cluster}: cannot reach the scheduler ({type(exc).__name__}: {exc})") from None
    try:
        executor = DaskExecutor.of(client)
        logger.info("cluster %s: %s", spec, executor.description)
        yield replace(resources, cluster=client)
        logger.info(
            "cluster: %d bytes of tasks sent to the workers, %d bytes of results sent back",
            executor.task_bytes,
            executor.returned_bytes,
        )
    finally:
        _EXECUTORS.pop(id(client), None)
        client.close()
        if local is not None:
            local.close()


@dataclass(frozen=True, slots=True)
class _Accumulate:
    """A batch of a read on a worker: one fresh accumulator, every item's task added into it."""

    task: Callable[[Any, Any], None]
    new_state: Callable[[], Any]

    def __call__(self, items: Sequence[Any]) -> Any:
        state = self.new_state()
        for item in items:
            self.task(item, state)
        return state


def _call(runner: Callable[[Sequence[Any]], Any], items: Sequence[Any]) -> Any:
    return runner(items)


_EXECUTORS: dict[int, DaskExecutor] = {}


class DaskExecutor:
    """Runs block tasks on the cluster behind a ``distributed.Client``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.returned_bytes = 0
        """Bytes of the values the tasks sent back to the driver (Dask's size estimate)."""
        self.task_bytes = 0
        """Bytes of the pickled tasks sent out (once per read; the workers share them among themselves)."""

    @classmethod
    def of(cls, client: Any) -> DaskExecutor:
        """The executor of ``client`` (one per client, so that its byte counts cover a whole merge)."""
        distributed = _distributed()
        if not isinstance(client, distributed.Client):
            raise OptionError(
                f"cluster: expected a distributed.Client or an address string, got {type(client).__name__}"
            )
        found = _EXECUTORS.get(id(client))
        if found is None or found.client is not client:
            found = _EXECUTORS[id(client)] = cls(client)
        return found

    @property
    def remote(self) -> bool:
        return True

    @property
    def threads(self) -> int:
        """Worker threads in the cluster now."""
        workers = self.client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))

    @property
    def description(self) -> str:
        workers = self.client.scheduler_info().get("workers", {})
        return f"{len(workers)} worker(s), {self.threads} thread(s), scheduler {self.client.scheduler.address}"

    def map(
        self,
        items: Sequence[Item],
        task: Callable[[Item, State], None],
        new_state: Callable[[], State],
        *,
        cost: Callable[[Item], int],
        progress: Progress | None,
    ) -> list[State]:
        states: list[State] = []
        self._run(_Accumulate(task, new_state), items, cost, progress, lambda batch, state: states.append(state))
        return states

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
        self._run(_Accumulate(task, new_state), items, cost, progress, lambda batch, state: collect(state))

    def _check_workers(self, alone_since: float | None) -> float | None:
        """While tasks wait: raise :class:`ClusterError` once the cluster has had no worker for
        ``NO_WORKERS_TIMEOUT`` seconds (Dask itself would wait for one forever); return since when it
        has had none (``None``: it has workers)."""
        if self.client.scheduler_info().get("workers"):
            return None
        now = time.monotonic()
        if alone_since is None:
            logger.warning("cluster: no worker left; waiting up to %d s for one", NO_WORKERS_TIMEOUT)
            return now
        if now - alone_since > NO_WORKERS_TIMEOUT:
            raise ClusterError(
                f"cluster {self.client.scheduler.address}: no worker for {NO_WORKERS_TIMEOUT} s; "
                "the merge stopped (--resume continues it once workers are back)"
            )
        return alone_since

    def _result(self, future: Any, alone_since: float | None) -> tuple[Any, float | None]:
        """A finished task's result, and since when the cluster has had no worker. A result held only by
        workers that have gone since it finished is computed again, and with no worker left that would
        wait forever: wait in steps and check the workers in between (:meth:`_check_workers`)."""
        distributed = _distributed()
        while True:
            try:
                return future.result(timeout=WAIT_STEP), alone_since
            except distributed.TimeoutError:
                alone_since = self._check_workers(alone_since)

    def _batches(self, items: Sequence[Item], cost: Callable[[Item], int]) -> list[list[Item]]:
        """Consecutive items in batches of about equal cost: ``TASKS_PER_THREAD`` per worker thread, none
        over ``BATCH_BYTES`` (unless one item is)."""
        total = sum(cost(item) for item in items)
        target = max(1, min(BATCH_BYTES, -(-total // (TASKS_PER_THREAD * self.threads))))
        batches: list[list[Item]] = []
        current: list[Item] = []
        size = 0
        for item in items:
            if current and size + cost(item) > target:
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += cost(item)
        if current:
            batches.append(current)
        return batches

    def _run(
        self,
        runner: Callable[[Sequence[Any]], Any],
        items: Sequence[Any],
        cost: Callable[[Any], int],
        progress: Progress | None,
        done: Callable[[Sequence[Any], Any], None],
    ) -> None:
        if not items:
            return
        distributed = _distributed()
        import cloudpickle
        from dask.sizeof import sizeof

        try:  # (pickled here, once: a clear error, not a serialisation failure on the scheduler)
            payload = cloudpickle.dumps(runner)
        except OocTiesError:
            raise
        except (pickle.PicklingError, TypeError, AttributeError, ValueError) as exc:
            raise OptionError(f"this merge cannot run on a cluster: its tasks do not pickle ({exc})") from None
        self.task_bytes += len(payload)
        batches = self._batches(items, cost)
        # The task goes out as the result of a task of its own, not scattered: scattered data lost with
        # its workers cannot be made again, a task's result can (the scheduler keeps its spec).
        shipped = self.client.submit(pickle.loads, payload, pure=False)
        futures = {self.client.submit(_call, shipped, batch, pure=False): batch for batch in batches}
        finished = False
        arriving = distributed.as_completed(list(futures), loop=self.client.loop)
        checked = time.monotonic()
        alone_since: float | None = None
        try:
            while not arriving.is_empty():
                ready = arriving.next_batch(block=False)
                if not ready:
                    time.sleep(POLL)
                    if time.monotonic() - checked > WAIT_STEP:
                        alone_since = self._check_workers(alone_since)
                        checked = time.monotonic()
                    continue
                alone_since = None
                for future in ready:
                    if future.status == "error":
                        raise future.exception()
                    try:
                        result, alone_since = self._result(future, alone_since)
                    except distributed.CancelledError as exc:  # (the scheduler dropped it: restarted, say)
                        raise ClusterError(
                            f"cluster {self.client.scheduler.address}: a task was cancelled ({exc}); "
                            "the merge stopped (--resume continues it)"
                        ) from None
                    self.returned_bytes += sizeof(result)
                    batch = futures[future]
                    done(batch, result)
                    if progress is not None:
                        progress.advance(sum(cost(item) for item in batch))
            finished = True
        finally:
            if not finished:  # (stop what is still running; finished futures are released with the dict)
                self.client.cancel(list(futures), force=True)
            futures.clear()
            del shipped
