"""Progress reporting in bytes.

The library reports progress through the small :class:`Progress` protocol and never prints; the CLI
passes :class:`TqdmProgress`, a tqdm bar in bytes with rate and ETA, one bar per pass. A pass whose
reads depend on what it finds (pass 1) starts with the total it expects and grows it when it must read
more, so the bar ends exactly at its total.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import IO, Protocol

__all__ = ["Progress", "ProgressFactory", "TqdmProgress", "progress_bar", "tqdm_progress"]


class Progress(Protocol):
    """One pass's progress: ``advance`` by bytes done; ``grow`` the total by bytes the pass turns out to
    need beyond it (before reading them); ``close`` when the pass ends."""

    def advance(self, nbytes: int) -> None: ...

    def grow(self, nbytes: int) -> None: ...

    def close(self) -> None: ...


class ProgressFactory(Protocol):
    """Makes the :class:`Progress` of one pass, given its description and total bytes."""

    def __call__(self, description: str, total: int) -> Progress: ...


class TqdmProgress:
    """A tqdm bar in bytes (SI units), written to stderr.

    The bar follows the terminal's width. A terminal that reports no size (a pseudo-terminal nobody
    sized, as ``script``, some containers and editors open) would get empty bars, each leaving a blank
    line behind when it closes; there the bar takes a terminal of 80 columns and 24 rows.
    """

    def __init__(self, description: str, total: int) -> None:
        from tqdm import tqdm

        sized = _terminal_columns(sys.stderr) != 0
        self._bar = tqdm(
            total=total,
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            dynamic_ncols=sized,
            ncols=None if sized else 80,
            nrows=None if sized else 24,  # (tqdm hides a bar below the last of 0 rows)
            file=sys.stderr,
            leave=True,
        )

    def advance(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def grow(self, nbytes: int) -> None:
        self._bar.total += nbytes
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _terminal_columns(stream: IO[str]) -> int | None:
    """The width of the terminal ``stream`` writes to (0 if it reports none); ``None`` if not a terminal."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None


def tqdm_progress(description: str, total: int) -> Progress:
    """A :class:`ProgressFactory` of tqdm bars."""
    return TqdmProgress(description, total)


@contextlib.contextmanager
def progress_bar(factory: ProgressFactory | None, description: str, total: int) -> Iterator[Progress | None]:
    """One pass's :class:`Progress` from ``factory`` (``None`` without a factory), closed at the end."""
    bar = factory(description, total) if factory is not None and total > 0 else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
