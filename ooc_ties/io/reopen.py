"""Inputs sent to another process (a cluster's worker) travel as their path or URL and reopen there.

A memory map or an open store cannot be pickled, and a task must not carry a model's data: a pickled
input is the place it lives and its identity (:mod:`ooc_ties.identity`). The worker opens it once per
process, however many tasks name it, and checks that it reads the same files the driver planned with,
so a path that means something else on another machine fails with its name, not with wrong bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from ooc_ties.errors import CheckpointFormatError
from ooc_ties.identity import SourceIdentity

__all__ = ["reopened"]

Source = TypeVar("Source")

_OPEN: dict[tuple[str, str, SourceIdentity | None], object] = {}
_LOCK = threading.Lock()


def reopened(
    opener: Callable[[str], Source],
    spec: str,
    identity: SourceIdentity | None,
    identity_of: Callable[[Source], SourceIdentity | None],
) -> Source:
    """``opener(spec)``, opened once in this process for each (opener, spec, identity), and refused if
    its identity now differs from ``identity`` (the driver's)."""
    key = (getattr(opener, "__qualname__", repr(opener)), spec, identity)
    with _LOCK:
        found = _OPEN.get(key)
        if found is None:
            source = opener(spec)
            if identity is not None:
                now = identity_of(source)
                why = identity.mismatch(now) if now is not None else "it has no identity here"
                if why is not None:
                    raise CheckpointFormatError(f"{spec}: not the input the merge was planned with: {why}")
            _OPEN[key] = found = source
        return found  # type: ignore[return-value]
