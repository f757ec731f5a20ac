"""What pass 1 reads and holds: the one statement of its reads, and the constants that size them.

The dry run's expected and most reads, the plan's ``threshold_passes``, pass 1's progress total and the
plan's memory estimate all come from here, so this module depends on nothing of pass 1's machinery
(the plan imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ooc_ties.blocks import BlockRef, group_blocks, plan_blocks
from ooc_ties.config import MergeOptions, RescaleRule, TrimRule
from ooc_ties.kernels.histogram import HIGH_BINS, LANES, LOW_BINS, bracket_width
from ooc_ties.methods import Sparsify
from ooc_ties.sparsity import needs_sparsity

if TYPE_CHECKING:
    from ooc_ties.plan import MergePlan

__all__ = [
    "BRACKET_BINS",
    "SAMPLE_STRIDE",
    "VOTE_STRIDE",
    "Pass1Read",
    "group_reads",
    "max_reads",
    "pass1_memory",
    "pass1_reads",
    "plan_reads",
    "records_open_elements",
    "threshold_sample",
    "vote_sample",
]

SAMPLE_STRIDE = 8
"""Pass 1 samples every 8th block of a group (the first block at least): its high-bits histogram
brackets the thresholds."""
VOTE_STRIDE = 16
"""Pass 1 guesses the majority sign from the votes of every 16th block of a group (the first at least).
Pass 2 settles it exactly, so this sample only needs to be good enough that a correction is rare: a
sixteenth keeps a ``paper`` merge within 2.2 reads of its inputs (0.125 + 1 + 0.0625 + 1)."""
BRACKET_BINS = 8
"""High bins whose low bits the one-read select counts, per model: ``8 * 512 KiB`` of int64 counts per
model and worker (see :func:`pass1_memory`)."""


def threshold_sample(blocks: Sequence[BlockRef]) -> list[BlockRef]:
    """The blocks of a group pass 1 samples to bracket the thresholds."""
    return list(blocks[::SAMPLE_STRIDE])


def vote_sample(blocks: Sequence[BlockRef]) -> list[BlockRef]:
    """The blocks of a group pass 1 samples to guess the majority sign (and counts the kept values of,
    for pass 2 to check)."""
    return list(blocks[::VOTE_STRIDE])


def records_open_elements(options: MergeOptions) -> bool:
    """Whether pass 2 can record every open element with its result under the other majority sign:
    not where a tie quota or the general rule (a drop, a band, rescaling, ``sign_from``) decides the
    values (``merge``'s kernel, ``_alternate``). Then pass 1 always guesses the majority sign."""
    return not needs_sparsity(options) and not (options.trims and options.trim is TrimRule.TOPK)


@dataclass(frozen=True, slots=True)
class Pass1Read:
    """One read pass 1 makes, or may make, of a group (see :func:`pass1_reads`)."""

    what: str
    """What it reads for, as the dry run names it."""
    nbytes: int
    """Bytes it reads."""
    unless: str = ""
    """Empty for a read pass 1 expects to make; else the condition under which it is made."""

    @property
    def expected(self) -> bool:
        return not self.unless


def pass1_reads(
    options: MergeOptions, full: int, sample: int, votes: int, given: bool = False
) -> tuple[Pass1Read, ...]:
    """Every read pass 1 makes or may make of a group of ``full`` bytes whose threshold sample
    (:func:`threshold_sample`) has ``sample`` bytes and whose vote sample (:func:`vote_sample`) has
    ``votes`` bytes. This is the one statement of what pass 1 reads: the
    dry run's expected and most reads (``MergePlan.describe``), ``MergePlan.threshold_passes`` and the
    progress total (the expected reads, grown by the others as they start) are all taken from it.

    * Thresholds (density below 1): the sample, and one read for both histogram levels; a second read
      if a threshold lies outside its bracket and a third if it lies outside the bracket's span too.
      When the sample is the whole group (one block), two reads.
    * Tie counts (``topk``, density below 1): one read, skipped where no tie straddles a cut-off. It is
      counted as expected: with bf16 or f16 task vectors ties at the cut-off are the rule.
    * Breadcrumbs' band: the thresholds twice, once per cut (the tie counts of both in one read).
    * Rescale norms (mergekit's L1 rule, where a drop or a trim keeps less than all): one read.
    * The majority sign (``majority``): the vote sample's votes (and, counted in the one-read
      thresholds' read, every block's votes under estimated thresholds), a guess pass 2 settles. The other
      blocks vote too (one read in all) only if pass 2 cannot record the open elements
      (:func:`records_open_elements`) and the sample is not decisive. When the sample is the whole
      group, one read.

    ``given`` thresholds skip the histograms and the vote (the tie counts depend on the block grid).
    """
    trims = options.trims
    cuts = 2 if options.method.sparsify is Sparsify.BAND else 1  # breadcrumbs: the band's two cuts
    reads: list[Pass1Read] = []
    if trims and not given:
        if sample < full:
            reads += [
                Pass1Read("threshold sample", cuts * sample),
                Pass1Read("one-read thresholds", cuts * full),
                Pass1Read("more threshold reads", cuts * 2 * full, "a threshold falls outside its sampled bracket"),
            ]
        else:
            reads.append(Pass1Read("two-read thresholds", cuts * 2 * full))
    if trims and options.trim is TrimRule.TOPK:
        reads.append(Pass1Read("tie counts", full))  # (both of the band's cuts in one read)
    if (options.drops or trims) and options.rescale and options.rescale_rule is RescaleRule.L1 and not given:
        reads.append(Pass1Read("rescale norms", full))
    if options.majority_vote and not given:
        if votes < full:
            reads.append(Pass1Read("sign-vote sample", votes))
            if not records_open_elements(options):
                unless = "the majority-sign sample is not decisive"
                reads.append(Pass1Read("other blocks' sign votes", full - votes, unless))
        else:
            reads.append(Pass1Read("sign vote", full))
    return tuple(reads)


def max_reads(options: MergeOptions, full: int, sample: int, votes: int, given: bool = False) -> int:
    """The most pass 1 reads of a group, in bytes: every read of :func:`pass1_reads`."""
    return sum(r.nbytes for r in pass1_reads(options, full, sample, votes, given))


def plan_reads(plan: MergePlan, given: bool = False) -> tuple[Pass1Read, ...]:
    """The reads of :func:`pass1_reads` over every group of ``plan``, added up by what they are for, in
    the order pass 1 makes them; reads of no bytes are left out."""
    total: dict[tuple[str, str], int] = {}
    for group in group_blocks(plan, plan_blocks(plan.merged)).values():
        for read in group_reads(plan, group, given):
            total[read.what, read.unless] = total.get((read.what, read.unless), 0) + read.nbytes
    return tuple(Pass1Read(what, nbytes, unless) for (what, unless), nbytes in total.items() if nbytes)


def group_reads(plan: MergePlan, blocks: Sequence[BlockRef], given: bool) -> tuple[Pass1Read, ...]:
    """:func:`pass1_reads` of one group."""
    full = sum(b.in_nbytes for b in blocks)
    sample = sum(b.in_nbytes for b in threshold_sample(blocks))
    votes = sum(b.in_nbytes for b in vote_sample(blocks))
    return pass1_reads(plan.options, full, sample, votes, given)


def pass1_memory(n_models: int, threads: int) -> int:
    """Bytes pass 1 allocates at most (see ``MergePlan.peak_memory_estimate``).

    Per worker, the one-read select's int64 counts (both levels, :data:`BRACKET_BINS` low-bits
    histograms, and a page of slack to place them, see ``bracket_counts``) and the scratch the two-read
    kernels allocate; once, its lookup table and the totals held between reads (high-bits and low-bits
    histograms, twice for their sums).
    """
    per_worker = n_models * bracket_width(BRACKET_BINS) * 8 + 4096 + LANES * (LOW_BINS + 1) * 4
    shared = n_models * (LANES * HIGH_BINS * 8 + 2 * (HIGH_BINS + LOW_BINS) * 8)
    return threads * per_worker + shared
