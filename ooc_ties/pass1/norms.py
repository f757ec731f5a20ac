"""Rescale factors: per tensor and model, mergekit's L1 rescale of the values a random drop keeps.

One read of the group: each block's drop masks are drawn (:class:`~ooc_ties.sparsity.Sparsity`, the
same masks pass 2 draws) and the exact L1 norms of the whole task vector and of its kept values are
counted (:mod:`ooc_ties.kernels.norms`); per tensor, the factor is ``whole / kept`` in float32
(:func:`~ooc_ties.sparsity.l1_scale`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.kernels.norms import EXPONENTS, exact_sum, l1_counts
from ooc_ties.pass1.scan import Scan
from ooc_ties.sparsity import Sparsity, l1_scale

__all__ = ["rescale_factors"]


def rescale_factors(
    scan: Scan, blocks: Sequence[BlockRef], sparsity: Sparsity, label: str
) -> dict[str, tuple[float, ...]]:
    """Per tensor of ``blocks``, each model's rescale factor (as a float32 value)."""
    with_base = scan.plan.options.method.uses_base

    def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], counts: dict[str, np.ndarray]) -> None:
        masks = sparsity.masks(ref, base, fts)
        if masks.shape[1] == 0:  # nothing dropped in this tensor: its factor is 1
            return
        mine = counts.get(ref.tensor.name)
        if mine is None:
            mine = counts[ref.tensor.name] = np.zeros((scan.n, 2, EXPONENTS), np.int64)
        for t in range(scan.n):
            l1_counts(base, fts[t], with_base, masks[t], mine[t, 0], mine[t, 1])

    states = scan.run(f"{label}rescale norms", blocks, work, dict)
    totals: dict[str, np.ndarray] = {}
    for state in states:
        for name, counts in state.items():
            totals[name] = totals[name] + counts if name in totals else counts
    return {
        name: tuple(float(l1_scale(exact_sum(c[t, 0]), exact_sum(c[t, 1]))) for t in range(scan.n))
        for name, c in totals.items()
    }
