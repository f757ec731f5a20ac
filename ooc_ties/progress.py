"""Progress reporting in bytes.

The library reports progress through the small :class:`Progress` protocol and never prints; the CLI
passes :class:`TqdmProgress`, a tqdm bar in bytes with rate and ETA, one bar per pass.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Progress", "ProgressFactory", "TqdmProgress", "progress_bar", "tqdm_progress"]


class Progress(Protocol):
    """One pass's progress: ``advance`` by bytes done; ``close`` when the pass ends."""

    def advance(self, nbytes: int) -> None: ...

    def close(self) -> None: ...


class ProgressFactory(Protocol):
    """Makes the :class:`Progress` of one pass, given its description and total bytes."""

    def __call__(self, description: str, total: int) -> Progress: ...


class TqdmProgress:
    """A tqdm bar in bytes (SI units), written to stderr."""

    def __init__(self, description: str, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            dynamic_ncols=True,
            file=sys.stderr,
            leave=True,
        )

    def advance(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


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
