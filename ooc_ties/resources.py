"""How a merge runs: memory budget, threads, shards, writes, cluster. None of it changes the output bytes.

:class:`Resources` is the frozen value the engine takes (:class:`~ooc_ties.config.MergeOptions` holds what
decides the bytes); ``parse_size`` and ``parse_threads`` validate the CLI's flags and the library's values.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ooc_ties.cluster import parse_cluster
from ooc_ties.errors import OptionError

__all__ = ["Resources", "parse_size", "parse_threads"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(value: str | int, option: str = "size") -> int:
    """A byte count: an integer, or a number with a unit (``2GiB``, ``256MiB``, ``5GB``, ``500M``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise OptionError(f'{option} "{value}" is not a size (expected e.g. "2GiB", "512MiB", "5GB")')
        number, unit, binary = match.groups()
        base = 1024 if (binary or not unit) else 1000
        size = int(float(number) * base ** "_kmgt".index(unit.lower() or "_"))
    if size <= 0:
        raise OptionError(f'{option} must be positive; got "{value}"')
    return size


def parse_threads(value: int | None) -> int:
    """Worker threads: a positive integer; ``None`` for every CPU this process may run on."""
    if value is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f"threads must be a positive integer; got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Resources:
    """How a merge runs; none of it changes the output bytes."""

    memory_budget: int = 2 * 1024**3
    """Bytes of working memory the engine may allocate (blocks, histograms); see docs/memory.md."""
    threads: int = field(default_factory=lambda: parse_threads(None))
    """Worker threads for both passes."""
    shard_size: int = 5 * 1000**3
    """Largest output shard in bytes (a tensor larger than this gets a shard of its own)."""
    max_block_elements: int | None = None
    """Cap on the block size in elements, below what the budget allows (tests and tuning)."""
    durable: bool = False
    """Wait until the output is on disk (``fsync``) before publishing it (see docs/memory.md)."""
    direct_io: bool = True
    """Write safetensors shards with ``O_DIRECT``, past the page cache, where the file system allows it
    (:mod:`ooc_ties.io.direct`); False writes through the page cache. The bytes are the same."""
    cluster: Any = None
    """Where the block tasks run: ``None`` for this process's threads, a ``distributed.Client``, or an
    address (``tcp://host:8786``, ``local:N``) that the merge connects to for its duration
    (docs/distributed.md). The bytes are the same."""

    def __post_init__(self) -> None:
        if self.max_block_elements is not None and (
            isinstance(self.max_block_elements, bool)
            or not isinstance(self.max_block_elements, int)
            or self.max_block_elements < 1
        ):
            raise OptionError(f"max block elements must be a positive integer; got {self.max_block_elements!r}")
        object.__setattr__(self, "memory_budget", parse_size(self.memory_budget, "memory budget"))
        object.__setattr__(self, "threads", parse_threads(self.threads))
        object.__setattr__(self, "shard_size", parse_size(self.shard_size, "shard size"))
        if isinstance(self.cluster, str):
            object.__setattr__(self, "cluster", parse_cluster(self.cluster))

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy sent to a cluster's workers (inside a task's plan) leaves the client behind: only the
        # driver talks to the scheduler.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["cluster"] = None
        return (_resources, (fields,))


def _resources(fields: dict[str, Any]) -> Resources:
    return Resources(**fields)
