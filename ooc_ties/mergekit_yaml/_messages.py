"""Values quoted in the one-line messages of :class:`~ooc_ties.errors.OptionError`."""

from __future__ import annotations

__all__ = ["one_line", "show"]


def show(value: object, limit: int = 80) -> str:
    """``repr(value)`` for a message: one line, and cut short if long (a whole template, a big mapping)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: object) -> str:
    """``str(text)`` on one line, its runs of whitespace (line breaks too) made single spaces."""
    return " ".join(str(text).split())
