"""WriteQueue: queued writes run one at a time, in order, on the workers; buffers are reused."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ooc_ties.schedule import run_blocks
from ooc_ties.write_queue import WriteQueue


def test_writes_run_in_order_one_at_a_time_from_many_workers() -> None:
    queue = WriteQueue(block_elements=64, buffers_per_dtype=4)
    written: list[int] = []
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def write(item: int, buffer: np.ndarray) -> None:
        nonlocal inside, most_inside
        with guard:
            inside += 1
            most_inside = max(most_inside, inside)
        assert (buffer == item).all()  # the buffer was not handed out again before its write ran
        time.sleep(0.0005)
        written.append(item)
        with guard:
            inside -= 1

    def task(item: int, _: None) -> None:
        buffer = queue.buffer(np.dtype(np.int64))
        buffer[:] = item
        queue.submit(buffer, lambda: write(item, buffer))

    run_blocks(list(range(200)), task, lambda: None, threads=4)
    queue.drain()
    assert sorted(written) == list(range(200))
    assert most_inside == 1
    assert queue.pending == 0


def test_order_of_submission_is_the_order_of_writes() -> None:
    queue = WriteQueue(block_elements=8, buffers_per_dtype=2)
    written: list[int] = []
    for item in range(10):
        buffer = queue.buffer(np.dtype(np.uint16))
        queue.submit(buffer, lambda item=item: written.append(item))  # type: ignore[misc]
    queue.drain()
    assert written == list(range(10))


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


def test_a_failing_write_raises_in_the_worker_that_ran_it_and_frees_its_buffer() -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=2)
    buffer = queue.buffer(np.dtype(np.uint8))

    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        queue.submit(buffer, fail)
    # the buffer is back in the pool, and later writes still run
    done: list[str] = []
    again = queue.buffer(np.dtype(np.uint8))
    assert again.ctypes.data == buffer.ctypes.data
    queue.submit(again, lambda: done.append("ok"))
    assert done == ["ok"]


def test_a_worker_needing_a_buffer_runs_the_queued_writes() -> None:
    queue = WriteQueue(block_elements=4, buffers_per_dtype=2)
    written: list[int] = []
    # Take the writing lock, as a worker busy writing would: submits only queue.
    queue._writing.acquire()
    try:
        for item in range(2):
            buffer = queue.buffer(np.dtype(np.uint8))
            queue.submit(buffer, lambda item=item: written.append(item))  # type: ignore[misc]
        assert written == [] and queue.pending == 2
        got: list[np.ndarray] = []
        waiter = threading.Thread(target=lambda: got.append(queue.buffer(np.dtype(np.uint8))))
        waiter.start()
        time.sleep(0.05)
        assert not got  # every buffer is queued: it waits for the writer
    finally:
        queue._writing.release()
    waiter.join(timeout=5)
    assert got and written == [0, 1]


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
    plan = plan_merge(base, fts, PRESETS["paper"], Resources(threads=3))
    assert plan.work_bytes_per_element == 2 * (4 + 2)
    fixed = plan.peak_memory_estimate - 3 * plan.block_elements * plan.work_bytes_per_element
    one_dtype = plan_merge(base, fts, PRESETS["paper"].with_(out_dtype=BF16), Resources(threads=3))
    assert one_dtype.work_bytes_per_element == 2 * 2
    assert one_dtype.peak_memory_estimate - 3 * one_dtype.block_elements * 4 == fixed
