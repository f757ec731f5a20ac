"""The kept counts pass 2 checks: which blocks it counts the values each model's trim keeps in, and the
check of those counts against what pass 1 counted in the same blocks (inputs that changed, or are not
those the thresholds came from, are refused).
"""

from __future__ import annotations

import numpy as np

from ooc_ties.blocks import GLOBAL, BlockRef, group_blocks, plan_blocks
from ooc_ties.errors import IncompatibleCheckpointsError
from ooc_ties.inputs import MergeInputs
from ooc_ties.pass1.costs import vote_sample
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan

__all__ = ["check_kept", "counted_blocks"]


def counted_blocks(plan: MergePlan, thresholds: Thresholds) -> tuple[frozenset[int], frozenset[str]]:
    """The blocks whose kept values pass 2 counts (the count costs 0.3 ns per parameter, about 10% of a
    warm-cache merge), and the groups counted by their sample: the sample blocks of a group whose
    sign-vote sample pass 1 counted on this very grid (it had to read them after the trim anyway; a
    random drop's kept values are known only there), else every block of a group that trims, whose
    total pass 1 knows exactly from its histograms; none where nothing is trimmed."""
    counted: list[int] = []
    by_sample: list[str] = []
    sampled = thresholds.sample_block_elements == plan.block_elements
    for key, members in group_blocks(plan, plan_blocks(plan.merged)).items():
        groups = thresholds.groups.get(key, ())
        if sampled and all(g.sample_kept >= 0 for g in groups):
            counted += [b.ordinal for b in vote_sample(members)]
            by_sample.append(key)
        elif plan.options.trims:
            counted += [b.ordinal for b in members]
    return frozenset(counted), frozenset(by_sample)


def check_kept(
    kept: np.ndarray,
    counted: frozenset[int],
    by_sample: frozenset[str],
    thresholds: Thresholds,
    blocks: list[BlockRef],
    inputs: MergeInputs,
) -> None:
    """Refuse a merge whose trim kept other counts than pass 1 counted in the same blocks.

    Pass 1 counted, from the inputs it read, how many values of each model the thresholds keep in
    each group (its histograms) and in each group's sample blocks (its sign-vote sample); pass 2 counts
    the same in the blocks of :func:`counted_blocks` from the inputs it reads.
    They differ only if those are not the same data: thresholds given from other inputs, a resumed
    merge whose inputs changed in between, or a file rewritten during the merge. Where the inputs have
    an identity (:mod:`ooc_ties.identity`) this was refused before reading; this check also covers
    arrays in memory and remote stores."""
    totals: dict[str, np.ndarray] = {}
    for ref in blocks:
        key = thresholds.key(ref.tensor.name)
        if ref.ordinal in counted:
            totals[key] = totals.get(key, 0) + kept[ref.ordinal]
    for key, total in totals.items():
        outliers = thresholds.outliers.get(key)
        sample = key in by_sample
        for t, group in enumerate(thresholds.groups[key]):
            expected = group.sample_kept if sample else group.kept
            if not sample and outliers is not None:  # the band: the lower cut's values less the upper's
                expected -= outliers[t].kept
            if int(total[t]) != expected:
                what = "the model" if key == GLOBAL else f"tensor {key!r}"
                where = f"the sample blocks of {what}" if sample else what
                raise IncompatibleCheckpointsError(
                    f"{inputs.fts[t].label}: the merge kept {int(total[t]):,} values of {where} where pass 1 "
                    f"counted {expected:,} for its thresholds: this model's data is not the data the "
                    "thresholds were computed from (other inputs, or changed since)"
                )
