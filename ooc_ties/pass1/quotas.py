"""Tie quotas: under the ``topk`` rule, how many values equal to a threshold each block keeps.

The ``topk`` rule keeps exactly ``m`` values, so when some values equal to the threshold must be
dropped, the number of such values in every block is counted, and a running sum over the group's blocks
(in block order) tells each block how many of its own to keep, lowest flat index first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.kernels.histogram import count_equal
from ooc_ties.pass1.scan import Scan
from ooc_ties.pass1.thresholds import GroupThreshold

__all__ = ["tie_quotas"]


def tie_quotas(
    scan: Scan,
    blocks: Sequence[BlockRef],
    cuts: Sequence[tuple[tuple[GroupThreshold, ...], np.ndarray]],
    label: str,
) -> None:
    """For each cut ``(groups, quotas)`` (a threshold per model; breadcrumbs' band has two cuts), write
    into ``quotas`` (rows: block ordinals) the ties each block of the group keeps (-1: all). The ties of
    every cut that splits them are counted in one read."""
    ordinals = [b.ordinal for b in blocks]
    patterns = []
    for groups, quotas in cuts:
        quotas[ordinals] = -1
        for t, g in enumerate(groups):
            if g.kept == 0 and g.keep_equal == 0:  # keeps nothing (``keep_none``): no tie is kept, none counted
                quotas[ordinals, t] = 0
        patterns.append(np.array([g.pattern if g.keep_equal >= 0 and g.kept > 0 else -1 for g in groups], np.int64))
    if all((p < 0).all() for p in patterns):
        return
    counts = equal_counts(scan, f"{label}tie counts", blocks, patterns)
    for (groups, quotas), pattern, count in zip(cuts, patterns, counts, strict=True):
        for t in np.flatnonzero(pattern >= 0).tolist():
            per_block = count[:, t]
            before = np.cumsum(per_block) - per_block
            quotas[ordinals, t] = np.clip(groups[t].keep_equal - before, 0, per_block)


def equal_counts(
    scan: Scan, label: str, blocks: Sequence[BlockRef], patterns: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Per pattern array, ``(len(blocks), models)``: the values equal to each model's pattern (``-1``:
    not counted), per block of the group; every pattern array in the same read."""
    rows = {ref.ordinal: row for row, ref in enumerate(blocks)}
    n = scan.n

    def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], found: dict[int, np.ndarray]) -> None:
        counts = found[ref.ordinal] = np.zeros((len(patterns), n), np.int64)  # (each block's own row)
        for pattern, row in zip(patterns, counts, strict=True):
            if (pattern >= 0).any():
                count_equal(base, fts, pattern, row)

    out = [np.zeros((len(blocks), n), np.int64) for _ in patterns]
    for state in scan.run(label, blocks, work, dict):
        for ordinal, counts in state.items():
            for p, row in enumerate(counts):
                out[p][rows[ordinal]] = row
    return out
