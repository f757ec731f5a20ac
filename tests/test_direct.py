"""Direct (O_DIRECT) writes of whole pages, buffered edges, and the fallbacks to buffered writes."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ooc_ties.io import direct
from ooc_ties.io.direct import ALIGNMENT, BounceBuffer, DirectWriter

SIZE = 9 * ALIGNMENT + 1234  # not a whole number of pages


def _direct_supported(folder: Path) -> bool:
    if not getattr(os, "O_DIRECT", 0):
        return False
    probe = folder / "probe"
    probe.touch()
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def _pieces(data: np.ndarray, cuts: list[int], order: list[int], misalign: list[int]) -> list[tuple[int, np.ndarray]]:
    """``data`` cut at ``cuts`` into (offset, copy) pieces, in ``order``; a copy's address is ``misalign``
    bytes past its file offset's place in a page (0: aligned as in the file, so written without a copy)."""
    bounds = [0, *sorted(set(cuts)), data.size]
    pieces = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        if stop == start:
            continue
        shift = (start + misalign[i % len(misalign)]) % ALIGNMENT
        backing = np.zeros(stop - start + 2 * ALIGNMENT, np.uint8)
        skip = -backing.ctypes.data % ALIGNMENT + shift
        piece = backing[skip : skip + stop - start]
        piece[:] = data[start:stop]
        pieces.append((start, piece))
    return [pieces[i] for i in order if i < len(pieces)]


def _write_file(path: Path, pieces: list[tuple[int, np.ndarray]], bounce: BounceBuffer | None) -> bool:
    """Write ``pieces`` as a :class:`ShardWriter` does; whether whole pages still went direct at the end."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, SIZE)
        writer = DirectWriter(path, fd, bounce)
        try:
            for offset, piece in pieces:
                writer.pwrite(piece, offset)
            return writer.direct
        finally:
            writer.close()
    finally:
        os.close(fd)


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(0, SIZE), max_size=12),
    order=st.permutations(list(range(13))),
    misalign=st.lists(st.sampled_from([0, 0, 1, 2, 7, 100, 2048, ALIGNMENT - 2]), min_size=1, max_size=5),
    bounce_pages=st.integers(1, 3),
)
def test_any_pieces_in_any_order_give_the_same_file(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[int], order: list[int], misalign: list[int], bounce_pages: int
) -> None:
    # Pieces shorter than a page, pieces that start or end on a page boundary, sources aligned in memory
    # (written straight from them) or not (copied through a bounce buffer smaller than the piece).
    folder = tmp_path_factory.mktemp("direct")
    data = np.random.default_rng(len(cuts)).integers(0, 256, SIZE, dtype=np.uint8)
    path = folder / "out.bin"
    went_direct = _write_file(path, _pieces(data, cuts, order, misalign), BounceBuffer(bounce_pages * ALIGNMENT))
    assert path.read_bytes() == data.tobytes()
    assert went_direct == _direct_supported(folder)


def test_without_a_bounce_buffer_every_write_is_buffered(tmp_path: Path) -> None:
    data = np.arange(SIZE, dtype=np.uint32).astype(np.uint8)
    went_direct = _write_file(tmp_path / "out.bin", [(0, data[:5000]), (5000, data[5000:])], None)
    assert not went_direct
    assert (tmp_path / "out.bin").read_bytes() == data.tobytes()


def test_a_bounce_buffer_is_whole_pages() -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        BounceBuffer(ALIGNMENT + 1)
    buffer = BounceBuffer(2 * ALIGNMENT)
    assert buffer.array().ctypes.data % ALIGNMENT == 0 and buffer.array().size == 2 * ALIGNMENT


def _intercept_direct(
    monkeypatch: pytest.MonkeyPatch,
    pwrite: Callable[[int, Any, int], int] | None = None,
    refuse_open: Callable[[], Any] | None = None,
) -> None:
    """Route every write on an O_DIRECT descriptor of ``ooc_ties.io.direct`` through ``pwrite`` (which
    may call ``os.pwrite`` itself); call ``refuse_open`` (which raises) instead of opening one."""
    real_open, real_pwrite = os.open, os.pwrite
    direct_fds: set[int] = set()

    def fake_open(path: Any, flags: int, *args: Any) -> int:
        if flags & direct._O_DIRECT and refuse_open is not None:
            refuse_open()
        fd = real_open(path, flags, *args)
        if flags & direct._O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in direct_fds and pwrite is not None:
            return pwrite(fd, data, offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct.os, "open", fake_open)
    monkeypatch.setattr(direct.os, "pwrite", fake_pwrite)


def _refuse_direct(monkeypatch: pytest.MonkeyPatch, where: str, code: int) -> list[int]:
    """Make ``os.open`` or ``os.pwrite`` fail with ``code`` on O_DIRECT descriptors; returns the failures."""
    failures: list[int] = []

    def fail(*_: Any) -> int:
        failures.append(code)
        raise OSError(code, os.strerror(code))

    if where == "open":
        _intercept_direct(monkeypatch, refuse_open=fail)
    else:
        _intercept_direct(monkeypatch, pwrite=fail)
    return failures


@pytest.mark.parametrize("where", ["open", "pwrite"])
@pytest.mark.parametrize("code", [errno.EINVAL, errno.EOPNOTSUPP])
def test_a_file_system_that_refuses_o_direct_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int
) -> None:
    if not getattr(os, "O_DIRECT", 0):
        pytest.skip("no O_DIRECT on this platform")
    failures = _refuse_direct(monkeypatch, where, code)
    data = np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8)
    pieces = _pieces(data, [3 * ALIGNMENT + 5, 7 * ALIGNMENT], [2, 0, 1], [0, 3])
    went_direct = _write_file(tmp_path / "out.bin", pieces, BounceBuffer())
    assert not went_direct
    assert failures == [code]  # refused once, then never tried again
    assert (tmp_path / "out.bin").read_bytes() == data.tobytes()


def test_other_write_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _direct_supported(tmp_path):
        pytest.skip("the test folder's file system refuses O_DIRECT")
    _refuse_direct(monkeypatch, "pwrite", errno.EIO)
    data = np.zeros(SIZE, np.uint8)
    with pytest.raises(OSError, match="Input/output error"):
        _write_file(tmp_path / "out.bin", [(0, data)], BounceBuffer())


def _spy_direct(monkeypatch: pytest.MonkeyPatch, short: list[int] | None = None) -> list[tuple[int, int]]:
    """Record (offset, bytes) of every write through an O_DIRECT descriptor; the first ones write only
    ``short[i]`` bytes, as the kernel may."""
    real_pwrite = os.pwrite
    direct_bytes: list[tuple[int, int]] = []
    limits = iter(short or [])

    def spy(fd: int, data: Any, offset: int) -> int:
        limit = next(limits, None)
        wrote = real_pwrite(fd, data[:limit] if limit else data, offset)
        direct_bytes.append((offset, wrote))
        return wrote

    _intercept_direct(monkeypatch, pwrite=spy)
    return direct_bytes


def _pages(direct_bytes: list[tuple[int, int]]) -> list[int]:
    return sorted(page for offset, n in direct_bytes for page in range(offset, offset + n, ALIGNMENT))


@pytest.mark.parametrize("misalign", [0, 3], ids=["from-the-buffer", "bounced"])
def test_short_direct_writes_are_continued_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, misalign: int
) -> None:
    # The kernel may write fewer pages than asked: the writer goes on from there, still directly.
    if not _direct_supported(tmp_path):
        pytest.skip("the test folder's file system refuses O_DIRECT")
    direct_bytes = _spy_direct(monkeypatch, short=[ALIGNMENT, 2 * ALIGNMENT])
    data = np.random.default_rng(2).integers(0, 256, SIZE, dtype=np.uint8)
    went_direct = _write_file(tmp_path / "out.bin", _pieces(data, [], [0], [misalign]), BounceBuffer())
    assert went_direct and (tmp_path / "out.bin").read_bytes() == data.tobytes()
    assert [n for _, n in direct_bytes] == [ALIGNMENT, 2 * ALIGNMENT, 6 * ALIGNMENT]
    assert _pages(direct_bytes) == list(range(0, 9 * ALIGNMENT, ALIGNMENT))


@pytest.mark.parametrize("misalign", [0, 5])
def test_every_whole_page_goes_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, misalign: int) -> None:
    # From an aligned source (written as it is) and from an unaligned one (through the bounce buffer).
    if not _direct_supported(tmp_path):
        pytest.skip("the test folder's file system refuses O_DIRECT")
    direct_bytes = _spy_direct(monkeypatch)
    data = np.random.default_rng(3).integers(0, 256, SIZE, dtype=np.uint8)
    cuts = [100, 2 * ALIGNMENT, 2 * ALIGNMENT + 10, 6 * ALIGNMENT - 1]
    went_direct = _write_file(tmp_path / "out.bin", _pieces(data, cuts, [3, 1, 4, 0, 2], [misalign]), BounceBuffer())
    assert went_direct and (tmp_path / "out.bin").read_bytes() == data.tobytes()
    # whole pages inside a piece: [4096, 8192) of [100, 8192), [12288, 20480) of [8202, 24575),
    # [24576, 36864) of [24575, SIZE)
    assert _pages(direct_bytes) == [4096, 12288, 16384, 24576, 28672, 32768]
