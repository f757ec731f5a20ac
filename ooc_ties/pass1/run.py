"""Pass 1: per group, the thresholds, the tie quotas and the majority sign; what pass 2 needs.

Groups are computed one after another (:mod:`ooc_ties.blocks`); within a group, the order statistics
(:mod:`~ooc_ties.pass1.order`), then the tie quotas (:mod:`~ooc_ties.pass1.quotas`), then the majority
sign (:mod:`~ooc_ties.pass1.votes`), each only where the options need it.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ooc_ties.blocks import GLOBAL, BlockRef, group_blocks, plan_blocks
from ooc_ties.inputs import MergeInputs
from ooc_ties.pass1.costs import group_reads
from ooc_ties.pass1.order import group_thresholds
from ooc_ties.pass1.quotas import tie_quotas
from ooc_ties.pass1.scan import Scan
from ooc_ties.pass1.thresholds import GroupThreshold, ThresholdBasis, Thresholds
from ooc_ties.pass1.votes import majority, sample_vote
from ooc_ties.plan import MergePlan
from ooc_ties.progress import ProgressFactory, progress_bar

__all__ = ["Pass1Result", "compute_thresholds"]


@dataclass(frozen=True, slots=True)
class Pass1Result:
    """What pass 1 hands to pass 2."""

    thresholds: Thresholds
    """Thresholds and majority signs (independent of the block grid)."""
    quotas: np.ndarray
    """``(blocks, models)`` ties to keep per block (``-1``: all), in :func:`plan_blocks` order."""
    bytes_read: int
    """Input bytes pass 1 read."""
    guessed: frozenset[str]
    """Group keys whose majority sign in ``thresholds`` is a guess from a sample, for pass 2 to settle."""


def compute_thresholds(
    plan: MergePlan, inputs: MergeInputs, progress: ProgressFactory | None = None, given: Thresholds | None = None
) -> Pass1Result:
    """Pass 1: the thresholds, and the per-block tie quotas pass 2 needs.

    With ``given`` thresholds (checked against the plan) nothing is recomputed but the tie quotas.

    Progress is one bar whose total starts at the reads pass 1 expects (:func:`pass1_reads`) and grows
    when a read beyond them starts; expected reads a group turns out not to need (tie counts where no
    tie is split) are counted as done when the group ends, so the bar ends at its total exactly.
    """
    if given is not None:
        given.check_fits(plan, inputs)
    blocks = plan_blocks(plan.merged)
    quotas = np.full((len(blocks), plan.n_models), -1, np.int64)
    keyed = group_blocks(plan, blocks)
    expected = {
        key: sum(r.nbytes for r in group_reads(plan, b, given is not None) if r.expected) for key, b in keyed.items()
    }
    with progress_bar(progress, "pass 1/2: thresholds", sum(expected.values())) as bar:
        runner = Scan(plan, inputs, bar)
        thresholds, guessed = _compute(plan, runner, keyed, expected, quotas, given)
    return Pass1Result(thresholds, quotas, runner.bytes_read, guessed)


def _group(
    scan: Scan, key: str, blocks: Sequence[BlockRef], quotas: np.ndarray, label: str, given: Thresholds | None
) -> tuple[tuple[GroupThreshold, ...], int | None, bool]:
    """Thresholds of one group, its block quotas (written into ``quotas``), its majority sign, and
    whether that sign is a guess (see :func:`~ooc_ties.pass1.votes.majority`).

    With ``given`` thresholds only the block quotas are computed (they depend on the block grid).
    """
    options = scan.plan.options
    result = given.groups[key] if given is not None else group_thresholds(scan, blocks, options, label)
    tie_quotas(scan, blocks, result, quotas, label)
    if given is not None:
        return result, given.majority.get(key) if options.majority_vote else None, False
    if not options.majority_vote:
        return result, None, False
    sampled = sample_vote(scan, blocks, result, quotas, label)
    if options.trims:  # what the sample keeps, for pass 2 to check in the same blocks
        result = tuple(dataclasses.replace(g, sample_kept=int(sampled.kept[t])) for t, g in enumerate(result))
    return (result, *majority(scan, blocks, result, quotas, label, sampled))


def _compute(
    plan: MergePlan,
    runner: Scan,
    keyed: dict[str, list[BlockRef]],
    expected: Mapping[str, int],
    quotas: np.ndarray,
    given: Thresholds | None,
) -> tuple[Thresholds, frozenset[str]]:
    bar = runner.bar
    groups: dict[str, tuple[GroupThreshold, ...]] = {}
    signs: dict[str, int] = {}
    guessed: set[str] = set()
    for key, members in keyed.items():
        runner.budget = runner.bytes_read + expected[key]
        label = "" if key == GLOBAL else f"{key}: "
        group, sign, guess = _group(runner, key, members, quotas, label, given)
        groups[key] = group
        if sign is not None:
            signs[key] = sign
        if guess:
            guessed.add(key)
        if bar is not None:
            bar.advance(runner.budget - runner.bytes_read)  # expected reads the group did not need
    basis = ThresholdBasis.of(plan.options, plan.n_models)
    if given is not None:
        grid = given.sample_block_elements  # their sample counts, on the grid they were counted on
    else:
        grid = plan.block_elements if plan.options.trims and plan.options.majority_vote else 0
    thresholds = Thresholds(
        basis, types.MappingProxyType(groups), types.MappingProxyType(signs), runner.inputs.identity(), grid
    )
    return thresholds, frozenset(guessed)
