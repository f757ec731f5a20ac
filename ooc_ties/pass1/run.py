"""Pass 1: per group, the thresholds, the tie quotas and the majority sign; what pass 2 needs.

Groups are computed one after another (:mod:`ooc_ties.blocks`); within a group, the order statistics
(:mod:`~ooc_ties.pass1.order`), then the tie quotas (:mod:`~ooc_ties.pass1.quotas`), then the majority
sign (:mod:`~ooc_ties.pass1.votes`), each only where the options need it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ooc_ties.blocks import GLOBAL, BlockRef, group_blocks, plan_blocks
from ooc_ties.config import RescaleRule
from ooc_ties.executor import executor_for
from ooc_ties.inputs import MergeInputs
from ooc_ties.methods import Sparsify
from ooc_ties.pass1.costs import group_reads, records_open_elements
from ooc_ties.pass1.norms import rescale_factors, trim_masks
from ooc_ties.pass1.order import band_thresholds, group_thresholds
from ooc_ties.pass1.quotas import tie_quotas
from ooc_ties.pass1.scan import Reader, Scan
from ooc_ties.pass1.shared import SharedReads
from ooc_ties.pass1.thresholds import GroupThreshold, ThresholdBasis, Thresholds
from ooc_ties.pass1.votes import majority, sample_vote
from ooc_ties.plan import MergePlan
from ooc_ties.progress import Progress, ProgressFactory, progress_bar
from ooc_ties.sparsity import Sparsity, needs_sparsity

__all__ = ["Pass1Result", "compute_thresholds", "compute_thresholds_shared"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pass1Result:
    """What pass 1 hands to pass 2."""

    thresholds: Thresholds
    """Thresholds and majority signs (independent of the block grid)."""
    quotas: np.ndarray
    """``(blocks, models)`` ties to keep per block (``-1``: all), in :func:`plan_blocks` order; for
    breadcrumbs ``(blocks, 2 * models)``, the band's upper cut's after the models' own."""
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
    with progress_bar(progress, "pass 1/2: thresholds", _expected_reads(plan, given is not None)) as bar:
        return _pass1(plan, inputs, bar, given, None)


def compute_thresholds_shared(
    plans: Sequence[MergePlan], inputs: MergeInputs, progress: ProgressFactory | None = None
) -> tuple[list[Pass1Result], int]:
    """Pass 1 of several merges of the same ``inputs`` on the same block grid, their reads shared
    (:class:`~ooc_ties.pass1.shared.SharedReads`): each result is the one :func:`compute_thresholds`
    gives that plan alone; and the bytes read for them all. One progress bar for them all, its total
    the most one of them expects."""
    if len(plans) == 1:
        result = compute_thresholds(plans[0], inputs, progress)
        return [result], result.bytes_read
    results: list[Pass1Result | None] = [None] * len(plans)
    errors: list[BaseException | None] = [None] * len(plans)
    total = max(_expected_reads(plan, False) for plan in plans)
    with progress_bar(progress, "pass 1/2: thresholds (shared)", total) as bar:
        shared = SharedReads(inputs, executor_for(plans[0].resources), len(plans), bar)
        shared.plan(total)

        def party(i: int) -> None:
            try:
                results[i] = _pass1(plans[i], inputs, None, None, shared.reader(i))
            except BaseException as error:  # (raised on the calling thread below)
                errors[i] = error
            finally:
                shared.leave()

        workers = [threading.Thread(target=party, args=(i,), name=f"ooc-ties-pass1-{i}") for i in range(len(plans))]
        for worker in workers:
            worker.start()
        try:
            shared.serve()
        except BaseException as stopped:
            shared.stop(stopped)
            raise
        finally:
            for worker in workers:
                worker.join()
        shared.finish()
    for failed in errors:
        if failed is not None:
            raise failed
    logger.info(
        "pass 1 of %d merges: read %d bytes, %.2f times less than %d merges alone",
        len(plans),
        shared.bytes_read,
        shared.requested / max(1, shared.bytes_read),
        len(plans),
    )
    return [r for r in results if r is not None], shared.bytes_read


def _expected_reads(plan: MergePlan, given: bool) -> int:
    keyed = group_blocks(plan, plan_blocks(plan.merged))
    return sum(r.nbytes for b in keyed.values() for r in group_reads(plan, b, given) if r.expected)


def _pass1(
    plan: MergePlan, inputs: MergeInputs, bar: Progress | None, given: Thresholds | None, reader: Reader | None
) -> Pass1Result:
    blocks = plan_blocks(plan.merged)
    band = plan.options.method.sparsify is Sparsify.BAND
    quotas = np.full((len(blocks), plan.n_models * (2 if band else 1)), -1, np.int64)
    keyed = group_blocks(plan, blocks)
    expected = {
        key: sum(r.nbytes for r in group_reads(plan, b, given is not None) if r.expected) for key, b in keyed.items()
    }
    runner = Scan(plan, inputs, bar, reader)
    thresholds, guessed = _compute(plan, runner, keyed, expected, quotas, given)
    return Pass1Result(thresholds, quotas, runner.bytes_read, guessed)


@dataclass(frozen=True, slots=True)
class _GroupResult:
    thresholds: tuple[GroupThreshold, ...]
    outliers: tuple[GroupThreshold, ...] | None
    scales: dict[str, tuple[float, ...]]
    sign: int | None
    guessed: bool


def _group(
    scan: Scan, key: str, blocks: Sequence[BlockRef], quotas: np.ndarray, label: str, given: Thresholds | None
) -> _GroupResult:
    """Thresholds of one group (and the band's upper cuts), its block quotas (written into ``quotas``:
    the band's in columns ``n..2n``), its tensors' rescale factors, its majority sign, and whether that
    sign is a guess (see :func:`~ooc_ties.pass1.votes.majority`).

    With ``given`` thresholds only the block quotas are computed (they depend on the block grid).
    """
    options = scan.plan.options.for_tensor(key)  # (a tensor's own values, under the tensor scope)
    n = scan.n
    # The majority sign's estimate from every block, counted in the thresholds' one read (when pass 1
    # will only guess the sign, :func:`~ooc_ties.pass1.votes.majority`).
    estimate = np.zeros(4, np.int64) if options.majority_vote and records_open_elements(options) else None
    band = options.method.sparsify is Sparsify.BAND
    outliers: tuple[GroupThreshold, ...] | None = None
    if given is not None:
        result = given.groups[key]
        outliers = given.outliers.get(key)
    elif band and options.trims:
        result, outliers = band_thresholds(scan, blocks, options, label)
    elif options.method.trims:
        result = group_thresholds(scan, blocks, options, label, votes=estimate)
    else:  # no order statistics: every value passes the trim (a drop, if any, decides)
        result = tuple(GroupThreshold.keep_all(sum(b.stop - b.start for b in blocks)) for _ in range(n))
    cuts = [(result, quotas[:, :n])] + ([(outliers, quotas[:, n:])] if outliers is not None else [])
    tie_quotas(scan, blocks, cuts, label)
    general = needs_sparsity(options)
    band_cut = {key: outliers} if outliers is not None else {}
    scales: dict[str, tuple[float, ...]] = {}
    if given is not None:
        names = {b.tensor.name for b in blocks}
        scales = {k: v for k, v in given.scales.items() if k in names}
    elif options.rescale and options.rescale_rule is RescaleRule.L1:
        if options.method.trims:
            if options.trims:
                masks = trim_masks(n, options.method.uses_base, result, outliers, quotas)
                scales = rescale_factors(scan, blocks, masks, label)
        else:
            drawing = Sparsity(options, n, lambda _: key, band_cut, {})
            if drawing.draws:
                scales = rescale_factors(scan, blocks, drawing.masks, label)
    reader = scan.inputs.sign_block if scan.inputs.sign is not None else None
    sparsity = Sparsity(options, n, lambda _: key, band_cut, scales, reader) if general else None
    if given is not None:
        return _GroupResult(result, outliers, scales, given.majority.get(key) if options.majority_vote else None, False)
    if not options.majority_vote:
        return _GroupResult(result, outliers, scales, None, False)
    sampled = sample_vote(scan, blocks, result, quotas, label, sparsity)
    if options.trims or (sparsity is not None and sparsity.draws):  # for pass 2 to check in the same blocks
        result = tuple(dataclasses.replace(g, sample_kept=int(sampled.kept[t])) for t, g in enumerate(result))
    counted = estimate if estimate is not None and estimate[3] else None
    sign, guessed = majority(scan, blocks, result, quotas, label, sampled, sparsity, counted)
    return _GroupResult(result, outliers, scales, sign, guessed)


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
    outliers: dict[str, tuple[GroupThreshold, ...]] = {}
    scales: dict[str, tuple[float, ...]] = {}
    signs: dict[str, int] = {}
    guessed: set[str] = set()
    for key, members in keyed.items():
        runner.budget = runner.bytes_read + expected[key]
        label = "" if key == GLOBAL else f"{key}: "
        group = _group(runner, key, members, quotas, label, given)
        groups[key] = group.thresholds
        if group.outliers is not None:
            outliers[key] = group.outliers
        scales.update(group.scales)
        if group.sign is not None:
            signs[key] = group.sign
        if group.guessed:
            guessed.add(key)
        if bar is not None:
            bar.advance(runner.budget - runner.bytes_read)  # expected reads the group did not need
    basis = ThresholdBasis.of(plan.options, plan.n_models)
    if given is not None:
        grid = given.sample_block_elements  # their sample counts, on the grid they were counted on
    else:
        counted = plan.options.trims or plan.options.method.sparsify.random
        grid = plan.block_elements if counted and plan.options.majority_vote else 0
    thresholds = Thresholds(
        basis,
        types.MappingProxyType(groups),
        types.MappingProxyType(signs),
        runner.inputs.identity(),
        grid,
        types.MappingProxyType(outliers),
        types.MappingProxyType(scales),
    )
    return thresholds, frozenset(guessed)
