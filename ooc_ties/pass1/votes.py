"""The majority sign: the sign of (#positive - #negative) elected signs over a group, for the paper's
zero-sign rule (an exact zero vote takes the sign most elements elected).

It needs the final trim, so it is counted after the thresholds. Pass 1 first votes on a fixed sample of
blocks (every ``SAMPLE_STRIDE``-th); when the sample is decisive, or the open elements it predicts fit
the room pass 2 has to record them, it only *guesses* the sign, and pass 2, which counts the votes of
every block anyway, settles the exact sign and corrects the elements whose result depended on a wrong
guess (``ooc_ties.pass2``). Otherwise the other blocks vote too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ooc_ties.blocks import BlockRef
from ooc_ties.kernels.ties import elect_count
from ooc_ties.pass1.costs import vote_sample
from ooc_ties.pass1.scan import Scan
from ooc_ties.pass1.thresholds import GroupThreshold
from ooc_ties.sparsity import Sparsity

__all__ = [
    "DECISIVE_MARGIN",
    "OPEN_CAPACITY",
    "OPEN_RECORD_BYTES",
    "PATCH_SHARE",
    "SampleVote",
    "majority",
    "sample_vote",
    "vote",
]

logger = logging.getLogger(__name__)

OPEN_CAPACITY = 4096
"""Pass 2 records at most this many open elements per block (with their result under the other sign)."""
OPEN_RECORD_BYTES = 12
"""Memory of one recorded open element: its index and its other result."""
PATCH_SHARE = 16
"""Recorded open elements may use up to 1/16 of the memory budget over the whole merge."""
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
) -> tuple[int, bool]:
    """The group's majority sign, and whether it is only a guess from its sample's votes ``sampled``.

    Pass 2 counts every block's votes anyway and settles the exact sign. A wrong guess costs
    correcting the *open* elements, which pass 2 records with their other result (see
    ``ooc_ties.pass2``), or merging again the blocks whose open elements it could not record. So the
    sample's sign is taken when the sample is decisive (a wrong guess is then very unlikely), or
    when the open elements the sample predicts fit the room pass 2 has for them; otherwise every
    block votes here (bf16 models often have a few percent of open elements).
    """
    sample, pos, neg, open_ = sampled.blocks, sampled.pos, sampled.neg, sampled.open
    if len(sample) == len(blocks):
        return int(np.sign(pos - neg)), False
    decisive = abs(pos - neg) >= DECISIVE_MARGIN * math.sqrt(max(pos + neg, 1))
    rate = open_ / max(1, sum(b.stop - b.start for b in sample))
    expected = rate * sum(b.stop - b.start for b in blocks)
    room = scan.plan.resources.memory_budget // PATCH_SHARE
    fits = expected * OPEN_RECORD_BYTES <= room / 2 and rate * scan.plan.block_elements <= OPEN_CAPACITY / 2
    logger.debug(
        "majority sign of %s: sample %d vs %d, about %d open elements (%s)",
        label or "the model",
        pos,
        neg,
        expected,
        "decisive" if decisive else "recordable" if fits else "too many to record: full vote",
    )
    if decisive or fits:
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
