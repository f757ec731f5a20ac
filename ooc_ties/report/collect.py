"""Collecting the interference statistics of a merge, block by block, in pass 2 (no read of its own).

Pass 2 merges every block with :func:`~ooc_ties.kernels.ties.merge` given ``counts``, which counts the
block's statistics in the same tile loop, into arrays from :meth:`Collector.fresh` (:func:`block_counts`
on a cluster's worker); :meth:`Collector.take` keeps them. When pass 2 ends, :meth:`Collector.tensors`
adds each tensor's blocks in block order (so the float64 sums do not depend on the threads) and
settles the open elements with the exact majority sign.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.config import ZeroSign
from ooc_ties.kernels.report import interference_outputs, magnitude_histogram
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan
from ooc_ties.report.signs import SignFile

__all__ = ["Collector", "TensorStats", "block_counts"]


@dataclass(frozen=True, slots=True)
class TensorStats:
    """One tensor's interference statistics, with its open elements settled (see
    :mod:`ooc_ties.kernels.report` for each quantity)."""

    name: str
    """The tensor."""
    size: int
    """Its elements."""
    l1: np.ndarray
    """Per model, ``sum |tau|``."""
    l2sq: np.ndarray
    """Per model, ``sum tau**2``."""
    kept_l1: np.ndarray
    """Per model, ``sum |v|`` of the kept values."""
    dots: np.ndarray
    """``(n, n)``: ``sum tau_i * tau_j``."""
    signs: np.ndarray
    """``(n, n)``: ``sum sign(tau_i) * sign(tau_j)``; the diagonal counts each model's non-zero values."""
    kept: np.ndarray
    """Per model, the values kept."""
    wins: np.ndarray
    """Per model, kept values agreeing with the elected sign (open elements under the majority sign)."""
    models_kept: np.ndarray
    """``(n + 1,)``: elements by how many models keep them."""
    conflicts: int
    """Elements whose kept values have both signs."""
    open: int
    """Elements whose vote is exactly zero between kept values (they take the majority sign)."""
    nothing_kept: int
    """Elements where no model keeps a value."""
    discarded: float
    """``sum |v|`` of the kept values that disagree with the elected sign (the disjoint mean drops them)."""


def block_counts(ref: BlockRef, magnitudes: np.ndarray, signs: bool) -> tuple[np.ndarray, ...]:
    """The arrays one block's merge counts into (the merge kernel's ``counts`` after the offset): the
    worker's ``magnitudes``, room for the block's elected signs if ``signs`` (else an empty array), and
    fresh outputs. A cluster's worker calls it as pass 2's threads do."""
    elected = np.zeros(ref.stop - ref.start if signs else 0, np.int8)
    return magnitudes, elected, *interference_outputs(magnitudes.shape[0])


class Collector:
    """Interference statistics of every block of one merge (see the module docstring)."""

    def __init__(self, plan: MergePlan, signs: SignFile | None = None) -> None:
        self.plan = plan
        self.signs = signs
        """Where the elected signs go (``--save-signs``), if anywhere."""
        self.n = plan.n_models
        self._blocks: dict[int, tuple[BlockRef, tuple[np.ndarray, ...]]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._magnitudes: list[np.ndarray] = []

    def fresh(self, ref: BlockRef) -> tuple[np.ndarray, ...]:
        """The arrays a block's merge counts into (:func:`block_counts`, with this thread's magnitudes)."""
        magnitudes = getattr(self._local, "magnitudes", None)
        if magnitudes is None:  # one per worker: integer counts add up the same in any order
            magnitudes = self._local.magnitudes = magnitude_histogram(self.n)
            self.add_magnitudes(magnitudes)
        return block_counts(ref, magnitudes, self.signs is not None)

    def take(self, ref: BlockRef, counts: tuple[np.ndarray, ...]) -> None:
        """Keep a block's counts once its merge has counted into them (:meth:`fresh`'s arrays), and write
        its elected signs if they are saved."""
        self.accept(ref, counts[2:])
        if self.signs is not None:
            self.signs.write(ref.tensor.name, ref.start, counts[1])

    def accept(self, ref: BlockRef, outputs: tuple[np.ndarray, ...]) -> None:
        """Keep one block's interference outputs (from this process or a cluster's worker)."""
        with self._lock:
            self._blocks[ref.ordinal] = (ref, outputs)

    def add_magnitudes(self, magnitudes: np.ndarray) -> None:
        """Add a worker's magnitude histograms (kept by reference: a local worker goes on adding to them)."""
        with self._lock:
            self._magnitudes.append(magnitudes)

    def magnitudes(self) -> np.ndarray:
        """Per model, the counts of ``|tau|`` per high-bits bin over every :data:`MAGNITUDE_STRIDE`-th
        element of each tensor (``(models, 65536)``), for the density curves."""
        return sum(self._magnitudes, magnitude_histogram(self.n))

    def tensors(self, thresholds: Thresholds) -> list[TensorStats]:
        """Every merged tensor's statistics, in the plan's order; ``thresholds`` with the exact majority
        signs (pass 2's result) settle the open elements."""
        options = self.plan.options
        by_tensor: dict[str, list[tuple[np.ndarray, ...]]] = {t.name: [] for t in self.plan.merged}
        for ordinal in sorted(self._blocks):
            ref, outputs = self._blocks[ordinal]
            by_tensor[ref.tensor.name].append(outputs)
        stats = []
        for tensor in self.plan.merged:
            total = interference_outputs(self.n)
            for outputs in by_tensor[tensor.name]:
                for into, part in zip(total, outputs, strict=True):
                    into += part
            norms, dots, signs, counts, kept_hist, totals, discarded = total
            key = thresholds.key(tensor.name)
            positive = options.zero_sign is ZeroSign.POSITIVE or thresholds.majority.get(key, 0) > 0
            consensus = options.method.consensus
            wins = counts[1] + (counts[2] if positive else counts[3])
            lost = discarded[0] + (discarded[1] if positive else discarded[2])
            stats.append(
                TensorStats(
                    tensor.name,
                    tensor.numel,
                    norms[0].copy(),
                    norms[1].copy(),
                    norms[2].copy(),
                    dots,
                    signs,
                    counts[0].copy(),
                    wins if consensus else counts[0].copy(),
                    kept_hist,
                    int(totals[0]),
                    int(totals[1]) if consensus else 0,
                    int(totals[2]),
                    float(lost) if consensus else 0.0,
                )
            )
        return stats

    @property
    def blocks(self) -> int:
        """Blocks counted so far."""
        return len(self._blocks)
