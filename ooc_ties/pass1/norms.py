"""Rescale factors: per tensor and model, mergekit's L1 rescale of the values a method keeps.

One read of the group: each block's keep masks are made (a random drop's masks, drawn as pass 2 draws
them by :class:`~ooc_ties.sparsity.Sparsity`, or the magnitude trim's, from the thresholds and tie
quotas pass 1 has just found) and the exact L1 norms of the whole task vector and of its kept values are
counted (:mod:`ooc_ties.kernels.norms`); per tensor, the factor is ``whole / kept`` in float32
(:func:`~ooc_ties.sparsity.l1_scale`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.kernels.keep import keep_flags
from ooc_ties.kernels.norms import EXPONENTS, exact_sum, l1_counts
from ooc_ties.pass1.scan import Scan
from ooc_ties.pass1.thresholds import GroupThreshold
from ooc_ties.sparsity import l1_scale

__all__ = ["Masks", "rescale_factors", "trim_masks"]


Masks = Callable[[BlockRef, np.ndarray, tuple[np.ndarray, ...]], np.ndarray]
"""A block's keep masks, one uint8 row per model (``(models, 0)``: nothing dropped in its tensor)."""


def rescale_factors(
    scan: Scan, blocks: Sequence[BlockRef], masks_of: Masks, label: str
) -> dict[str, tuple[float, ...]]:
    """Per tensor of ``blocks``, each model's rescale factor (as a float32 value)."""
    with_base = scan.plan.options.method.uses_base

    def work(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], counts: dict[str, np.ndarray]) -> None:
        masks = masks_of(ref, base, fts)
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
    ordered = [name for name in dict.fromkeys(b.tensor.name for b in blocks) if name in totals]  # (plan order)
    return {
        name: tuple(
            float(l1_scale(exact_sum(totals[name][t, 0]), exact_sum(totals[name][t, 1]))) for t in range(scan.n)
        )
        for name in ordered
    }


def trim_masks(
    n: int,
    with_base: bool,
    lower: tuple[GroupThreshold, ...],
    upper: tuple[GroupThreshold, ...] | None,
    quotas: np.ndarray,
) -> Masks:
    """The keep masks of a magnitude trim (``lower``) less the band's upper cut (``upper``), with each
    block's tie quotas from ``quotas`` (the band's in columns ``n..2n``); models keeping all of their
    task vector (density 1) are not rescaled, as in mergekit."""
    inf = np.float32(np.inf)

    def masks(ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...]) -> np.ndarray:
        row = quotas[ref.ordinal]
        out = np.empty((n, ref.stop - ref.start), np.uint8)
        for t in range(n):
            hi = (np.float32(upper[t].value), int(row[n + t])) if upper is not None else (inf, 0)
            keep_flags(base, fts[t], with_base, np.float32(lower[t].value), int(row[t]), *hi, out[t])
        return out

    return masks
