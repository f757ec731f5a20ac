"""WriteQueue: queued writes run one at a time, in order, on a writer thread; buffers are reused."""

from __future__ import annotations

import threading
import time
import traceback

import numpy as np
import pytest

from ooc_ties.schedule import run_blocks
from ooc_ties.write_queue import WriteQueue


def test_writes_run_on_one_writer_thread_not_on_the_workers() -> None:
    queue = WriteQueue(block_elements=64, buffers_per_dtype=4)
    written: list[int] = []
    writers: set[int] = set()
    workers: set[int] = set()

    def write(item: int, buffer: np.ndarray) -> None:
        assert (buffer == item).all()  # the buffer was not handed out again before its write ran
        writers.add(threading.get_ident())
        time.sleep(0.0005)
        written.append(item)

    def task(item: int, _: None) -> None:
        workers.add(threading.get_ident())
        buffer = queue.buffer(np.dtype(np.int64))
        buffer[:] = item
        queue.submit(buffer, lambda: write(item, buffer))

    run_blocks(list(range(200)), task, lambda: None, threads=4)
    queue.drain()
    assert sorted(written) == list(range(200))
    assert len(writers) == 1 and not writers & workers
    assert queue.pending == 0
    queue.close()


def test_order_of_submission_is_the_order_of_writes() -> None:
    queue = WriteQueue(block_elements=8, buffers_per_dtype=2)
    written: list[int] = []
    for item in range(10):
        buffer = queue.buffer(np.dtype(np.uint16))
        queue.submit(buffer, lambda item=item: written.append(item))  # type: ignore[misc]
    queue.drain()
    assert written == list(range(10))
    queue.close()


def test_buffers_are_pooled_per_dtype() -> None:
    queue = WriteQueue(block_elements=16, buffers_per_dtype=2)
    seen: set[int] = set()
    for _ in range(20):
        buffer = queue.buffer(np.dtype(np.float32))
        assert buffer.shape == (16,) and buffer.dtype == np.float32
        seen.add(buffer.ctypes.data)
        queue.submit(buffer, lambda: None)
    other = queue.buffer(np.dtype(np.uint16))
    assert other.dtype == np.uint16
    assert len(seen) <= 2
    queue.close()


def test_a_failing_write_is_raised_in_the_next_worker_and_drops_the_writes_after_it() -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=2)
    release = threading.Event()
    done: list[str] = []

    def fail() -> None:
        release.wait(5)
        raise OSError(28, "No space left on device")

    queue.submit(queue.buffer(np.dtype(np.uint8)), fail)
    queue.submit(queue.buffer(np.dtype(np.uint8)), lambda: done.append("after"))
    release.set()
    with pytest.raises(OSError, match="No space left"):
        queue.drain()
    with pytest.raises(OSError, match="No space left"):
        queue.buffer(np.dtype(np.uint8))
    with pytest.raises(OSError, match="No space left"):
        queue.submit(np.empty(4, np.uint8), lambda: done.append("later"))
    queue.close()
    assert done == []


def test_workers_do_not_wait_for_writes_until_every_buffer_is_queued() -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=2)
    release = threading.Event()
    written: list[int] = []

    def slow_write(item: int) -> None:
        release.wait(5)
        written.append(item)

    try:
        for item in range(2):
            buffer = queue.buffer(np.dtype(np.uint8))
            queue.submit(buffer, lambda item=item: slow_write(item))  # type: ignore[misc]
        assert written == []  # submit returned while the first write is still running
        got: list[np.ndarray] = []
        waiter = threading.Thread(target=lambda: got.append(queue.buffer(np.dtype(np.uint8))))
        waiter.start()
        time.sleep(0.05)
        assert not got  # every buffer is queued or being written: it waits for the writer
    finally:
        release.set()
    waiter.join(timeout=5)
    queue.drain()
    assert got and written == [0, 1]
    queue.close()


def test_close_drops_the_writes_not_yet_started_and_stops_the_writer() -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=3)
    started, release = threading.Event(), threading.Event()
    written: list[int] = []

    def first() -> None:
        started.set()
        release.wait(5)
        written.append(0)

    queue.submit(queue.buffer(np.dtype(np.uint8)), first)
    queue.submit(queue.buffer(np.dtype(np.uint8)), lambda: written.append(1))
    assert started.wait(5)
    closer = threading.Thread(target=queue.close)
    closer.start()
    time.sleep(0.05)
    assert closer.is_alive()  # it waits for the write that is running
    release.set()
    closer.join(timeout=5)
    assert written == [0] and queue.pending == 0
    assert queue._thread is not None and not queue._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        queue.submit(np.empty(4, np.uint8), lambda: None)


def test_raising_the_error_again_does_not_grow_its_traceback() -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=2)

    def fail() -> None:
        raise OSError(5, "Input/output error")

    queue.submit(queue.buffer(np.dtype(np.uint8)), fail)
    depths = []
    for _ in range(3):
        with pytest.raises(OSError) as info:
            queue.drain()
        depths.append(len(traceback.extract_tb(info.value.__traceback__)))
    assert depths[0] == depths[1] == depths[2]
    queue.close()


def test_drain_after_close_says_the_queue_is_closed() -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=2)
    queue.close()
    with pytest.raises(RuntimeError, match="closed"):
        queue.drain()


def test_a_writer_thread_that_cannot_start_does_not_leave_workers_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=2)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    first = queue.buffer(np.dtype(np.uint8))
    second = queue.buffer(np.dtype(np.uint8))
    with pytest.raises(RuntimeError, match="start new thread"):
        queue.submit(first, lambda: None)
    assert queue.pending == 0
    assert queue.buffer(np.dtype(np.uint8)) is first  # back in the pool, not waiting for a writer
    monkeypatch.undo()
    done: list[int] = []
    queue.submit(second, lambda: done.append(1))
    queue.drain()
    assert done == [1]
    queue.close()


def test_needs_two_buffers() -> None:
    with pytest.raises(ValueError):
        WriteQueue(block_elements=4, buffers_per_dtype=1)


def test_the_plan_counts_two_buffers_per_worker_and_output_dtype() -> None:
    from ooc_ties import PRESETS, Resources, plan_merge
    from ooc_ties.dtypes import BF16

    rng = np.random.default_rng(0)

    def model() -> dict[str, np.ndarray]:
        return {
            "a": rng.standard_normal((64, 8)).astype(np.float32),
            "b": rng.standard_normal((64, 8)).astype(np.float16),
            "c": np.arange(8, dtype=np.int64),  # copied, never buffered
        }

    base, fts = model(), [model(), model()]
    # the paper's majority sign: each worker also records open elements, an int64 index and a value
    plan = plan_merge(base, fts, PRESETS["paper"], Resources(threads=3))
    assert plan.work_bytes_per_element == 2 * (4 + 2) + 8 + 4
    fixed = plan.peak_memory_estimate - 3 * plan.block_elements * plan.work_bytes_per_element
    one_dtype = plan_merge(base, fts, PRESETS["paper"].with_(out_dtype=BF16), Resources(threads=3))
    assert one_dtype.work_bytes_per_element == 2 * 2 + 8 + 2
    assert one_dtype.peak_memory_estimate - 3 * one_dtype.block_elements * (4 + 10) == fixed
    positive = plan_merge(base, fts, PRESETS["mergekit"].with_(out_dtype=BF16), Resources(threads=3))
    assert positive.work_bytes_per_element == 2 * 2  # no majority sign, nothing recorded
