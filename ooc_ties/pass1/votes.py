"""The majority sign: the sign of (#positive - #negative) elected signs over a group, for the paper's
zero-sign rule (an exact zero vote takes the sign most elements elected).

It needs the final trim, so it is counted after the thresholds. Pass 1 votes on a fixed sample of
blocks (every ``VOTE_STRIDE``-th) and only *guesses* the sign from it; pass 2, which counts the votes of
every block anyway, settles the exact sign and corrects the elements whose result depended on a wrong
guess, from the records it keeps of them (:mod:`ooc_ties.open_elements`), without reading the inputs
again. Only where pass 2 cannot record them (a tie quota or a drop decides the values of an open
element) and the sample is not decisive do the other blocks vote in pass 1 too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.kernels.ties import elect_count
from ooc_ties.pass1.costs import records_open_elements, vote_sample
from ooc_ties.pass1.scan import Scan
from ooc_ties.pass1.thresholds import GroupThreshold
from ooc_ties.sparsity import Sparsity

__all__ = [
    "DECISIVE_MARGIN",
    "SampleVote",
    "majority",
    "sample_vote",
    "vote",
]

logger = logging.getLogger(__name__)

DECISIVE_MARGIN = 10.0
"""A sample is *decisive* if ``|pos - neg| >= 10 * sqrt(pos + neg)``: far beyond a coin's chance."""


@dataclass(frozen=True, slots=True)
class SampleVote:
    """What the sample blocks of a group (:func:`~ooc_ties.pass1.costs.vote_sample`) vote, and keep."""

    blocks: tuple[BlockRef, ...]
    """The sample blocks."""
    pos: int
    """Elements whose vote is positive."""
    neg: int
    """Elements whose vote is negative."""
    open: int
    """Open elements (an exact zero vote between non-zero values)."""
    kept: np.ndarray
    """Per model, the values the trim keeps in these blocks (pass 2 must count the same)."""


def sample_vote(
    scan: Scan,
    blocks: Sequence[BlockRef],
    result: tuple[GroupThreshold, ...],
    quotas: np.ndarray,
    label: str,
    sparsity: Sparsity | None = None,
) -> SampleVote:
    """The votes and kept counts of a group's sample blocks under the final trim ``result`` (and the
    method's general rule, ``sparsity``, if it has one)."""
    sample = tuple(vote_sample(blocks))
    thr = _thresholds(result)
    votes, kept = vote(scan, f"{label}majority sign (sample)", sample, thr, quotas, count=True, sparsity=sparsity)
    return SampleVote(sample, int(votes[0]), int(votes[1]), int(votes[2]), kept)


def majority(
    scan: Scan,
    blocks: Sequence[BlockRef],
    result: tuple[GroupThreshold, ...],
    quotas: np.ndarray,
    label: str,
    sampled: SampleVote,
    sparsity: Sparsity | None = None,
    estimate: np.ndarray | None = None,
) -> tuple[int, bool]:
    """The group's majority sign, and whether it is only a guess: from ``estimate``, the votes of every
    block under thresholds estimated from the threshold sample (counted in the thresholds' one read,
    see :func:`~ooc_ties.pass1.order.group_thresholds`), else from the sample's votes ``sampled``.

    Pass 2 counts every block's votes anyway and settles the exact sign. A wrong guess costs
    correcting the *open* elements, which pass 2 records with their other result (see
    :mod:`ooc_ties.open_elements`), so the sample's sign is taken whenever pass 2 can record every open
    element: the trim keeps all ties (no tie quota decides a value) and no drop decides one. Otherwise
    blocks with open elements would be merged again, so the sample's sign is taken only if the sample
    is decisive (a wrong guess is then very unlikely), and every block votes here if it is not.
    """
    sample, pos, neg, open_ = sampled.blocks, sampled.pos, sampled.neg, sampled.open
    if len(sample) == len(blocks):
        return int(np.sign(pos - neg)), False
    decisive = abs(pos - neg) >= DECISIVE_MARGIN * math.sqrt(max(pos + neg, 1))
    recordable = records_open_elements(scan.plan.options)
    rate = open_ / max(1, sum(b.stop - b.start for b in sample))
    logger.debug(
        "majority sign of %s: sample %d vs %d, about %d open elements (%s)",
        label or "the model",
        pos,
        neg,
        rate * sum(b.stop - b.start for b in blocks),
        "recordable" if recordable else "decisive" if decisive else "not recordable, not decisive: full vote",
    )
    if recordable and estimate is not None:
        # Every block's votes under thresholds a bin's width or so off: only the elements whose kept
        # values differ between the two (a few percent) can vote otherwise, where the sample's 1/16 of
        # the elements leaves a margin 4 times wider to chance (and a wrong guess costs rewriting every
        # open element of the output).
        logger.debug("majority sign of %s: estimated from every block %d vs %d", label or "the model", *estimate[:2])
        return int(np.sign(int(estimate[0]) - int(estimate[1]))), True
    if recordable or decisive:
        return int(np.sign(pos - neg)), True
    # Every block votes; the sample's blocks have (integer counts add in any order).
    done = {b.ordinal for b in sample}
    rest = [b for b in blocks if b.ordinal not in done]
    more, _ = vote(scan, f"{label}majority sign", rest, _thresholds(result), quotas, count=False, sparsity=sparsity)
    return int(np.sign(pos + int(more[0]) - neg - int(more[1]))), False


def _thresholds(result: tuple[GroupThreshold, ...]) -> np.ndarray:
    return np.array([g.value for g in result], np.float32)


def vote(
    scan: Scan,
    label: str,
    blocks: Sequence[BlockRef],
    thr: np.ndarray,
    quotas: np.ndarray,
    *,
    count: bool,
    sparsity: Sparsity | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(#S > 0, #S < 0, #open)`` over ``blocks``, and (if ``count``) the values each model keeps."""

    def work(
        ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], state: tuple[np.ndarray, np.ndarray]
    ) -> None:
        if sparsity is None:
            elect_count(base, fts, thr, quotas[ref.ordinal], scan.weights(ref.tensor.name), state[0], state[1])
        else:
            quota, args = sparsity.block_args(ref, base, fts, quotas[ref.ordinal])
            elect_count(base, fts, thr, quota, scan.weights(ref.tensor.name), state[0], state[1], args)

    def new_state() -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(3, np.int64), np.zeros(scan.n if count else 0, np.int64)

    states = scan.run(label, blocks, work, new_state)
    votes = sum((s[0] for s in states), np.zeros(3, np.int64))
    kept = sum((s[1] for s in states), np.zeros(scan.n if count else 0, np.int64))
    return votes, kept
