"""Pass 2: every block of the inputs merged, rounded to the output dtype and written as it goes.

A block task is pure: its output depends only on the input blocks, the pass-1 results (thresholds, the
block's tie quotas, the majority sign) and the options, so blocks run in any order on any number of
threads with identical bytes. Each block also counts its sign votes (which settle a majority sign that
pass 1 only guessed) and the values each model kept (which must add up to pass 1's counts). Writes go
through a :class:`~ooc_ties.write_queue.WriteQueue` on a writer thread, and each written block gets a
journal line.

Several merges of the same inputs on the same block grid (a grid of merges) run one pass 2 together
(:func:`run_pass2_shared`): each block's inputs are read once and every merge that still needs the block
merges it, into its own output.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ooc_ties.block_merge import BlockMerge, out_storage
from ooc_ties.blocks import BlockRef, plan_blocks
from ooc_ties.config import ZeroSign
from ooc_ties.errors import NonFiniteValueError
from ooc_ties.executor import executor_for
from ooc_ties.inputs import MergeInputs
from ooc_ties.journal import Journal
from ooc_ties.kept_counts import check_kept, counted_blocks
from ooc_ties.kernels.convert import decode_oracle
from ooc_ties.open_elements import PATCH_SHARE, OpenElements
from ooc_ties.outputs import Output
from ooc_ties.pass1.run import Pass1Result
from ooc_ties.pass1.thresholds import Thresholds
from ooc_ties.plan import MergePlan, TensorKind
from ooc_ties.progress import Progress, ProgressFactory, progress_bar
from ooc_ties.remote_merge import RemoteMerge, RemotePart
from ooc_ties.report.collect import Collector
from ooc_ties.schedule import run_blocks
from ooc_ties.sparsity import Sparsity, needs_sparsity
from ooc_ties.write_queue import WriteQueue

__all__ = ["Pass2", "Pass2Job", "run_pass2", "run_pass2_shared"]

logger = logging.getLogger(__name__)


def in_nbytes(ref: BlockRef) -> int:
    """A block's input bytes (the cost of merging it)."""
    return ref.in_nbytes


@dataclass(frozen=True, slots=True)
class Pass2Job:
    """One merge's part in a shared pass 2."""

    plan: MergePlan
    """Its plan (every job of a shared pass 2 has the same block grid)."""
    pass1: Pass1Result
    """Its pass-1 results."""
    sink: Output
    """Where its output goes."""
    journal: Journal | None
    """Its resume journal, if any."""
    spill: Path | None = None
    """The folder for its open-element spill file (``None``: a temporary file)."""
    report: Collector | None = None
    """Where its interference statistics go (``--report``), if anywhere."""


class Pass2:
    """Pass 2 of one merge: every block merged and written, its votes and kept counts recorded."""

    def __init__(self, job: Pass2Job, inputs: MergeInputs) -> None:
        plan, thresholds, quotas, guessed = job.plan, job.pass1.thresholds, job.pass1.quotas, job.pass1.guessed
        self.report = job.report
        self.inputs = inputs
        self.sink = job.sink
        self.journal = job.journal
        self.threads = plan.resources.threads
        self.executor = executor_for(plan.resources)
        options = plan.options
        self.options = options
        self.zero_positive: dict[str, bool] = {
            key: options.zero_sign is ZeroSign.POSITIVE or thresholds.majority.get(key, 0) > 0
            for key in thresholds.groups
        }
        sparsity = (
            Sparsity(
                options,
                plan.n_models,
                thresholds.key,
                thresholds.outliers,
                thresholds.scales,
                inputs.sign_block if inputs.sign is not None else None,
            )
            if needs_sparsity(options)
            else None
        )
        self.block = BlockMerge(
            inputs,
            options,
            plan.n_models,
            thresholds.key,
            {key: np.array([g.value for g in groups], np.float32) for key, groups in thresholds.groups.items()},
            self.zero_positive,
            guessed,
            quotas,
            sparsity,
            # Every open element of a block can be recorded (see ``plan.work_bytes_per_element``).
            plan.block_elements if guessed else 0,
        )
        # per block: #S>0, #S<0, open elements, open elements not recorded in ``patches``
        self.votes = np.zeros((len(quotas), 4), np.int64)
        # per block and model: values the trim kept, checked against pass 1's counts (see _counted_blocks)
        self.kept = np.zeros((len(quotas), plan.n_models), np.int64)
        self.counted, self.by_sample = counted_blocks(plan, thresholds)
        self.patches = OpenElements(plan.resources.memory_budget // PATCH_SHARE, job.spill)
        self.redoing = False
        self.count_only: frozenset[int] = frozenset()
        """Blocks an interrupted run merged, counted again for the report of the resumed one (not written)."""
        self.bytes_read = 0
        """Input bytes of the blocks merged (or merged again) by :meth:`run`."""
        self.writes = WriteQueue(plan.block_elements, 2 * self.threads)

    def new_state(self) -> dict[Any, np.ndarray]:
        return {"at": np.empty(self.block.open_capacity, np.int64)}

    def run(self, blocks: Sequence[BlockRef], bar: Progress | None) -> None:
        """Merge and write ``blocks`` (on the plan's threads, or its cluster)."""
        self.bytes_read += sum(b.in_nbytes for b in blocks)
        if self.executor.remote:
            task = RemoteMerge(self.inputs, (self.remote_part(),), {b.ordinal: (0,) for b in blocks}, self.redoing)
            self.executor.stream(blocks, task, dict, lambda state: self.collect(state, 0), cost=in_nbytes, progress=bar)
            return
        run_blocks(blocks, self.merge_block, self.new_state, threads=self.threads, cost=in_nbytes, progress=bar)
        self.writes.drain()

    def merge_block(self, ref: BlockRef, buffers: dict[Any, np.ndarray]) -> None:
        """Read a block's inputs, merge and write it."""
        base, fts = self.inputs.block(ref.tensor.name, ref.start, ref.stop)
        self.merge_arrays(ref, base, fts, buffers)
        self.inputs.release(ref.tensor.name, ref.start, ref.stop)

    def count_arrays(
        self, ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], buffers: dict[Any, np.ndarray]
    ) -> None:
        """Count a block an interrupted run merged, for the report of the resumed merge: the same kernel
        merges it into a scratch block, which is not written (the output has it already)."""
        if self.report is None:
            raise AssertionError("unreachable: blocks are counted only for a report")
        buffer = self.writes.buffer(out_storage(ref.tensor.out_dtype))  # (one of the pool: no memory of its own)
        out = buffer[: ref.stop - ref.start]
        counts = self.report.fresh(ref)
        try:
            self.block.count(ref, base, fts, out, counts)
        finally:
            self.writes.submit(buffer, lambda: None)  # (back to the pool, nothing written)
        self.report.take(ref, counts)

    def merge_arrays(
        self, ref: BlockRef, base: np.ndarray, fts: tuple[np.ndarray, ...], buffers: dict[Any, np.ndarray]
    ) -> None:
        """Merge a block from its inputs ``base`` and ``fts`` (kernel encoding) and queue its write."""
        storage = out_storage(ref.tensor.out_dtype)
        if ("alt", storage) not in buffers:
            buffers[("alt", storage)] = np.empty(self.block.open_capacity, storage)
        buffer = self.writes.buffer(storage)
        out = buffer[: ref.stop - ref.start]
        votes = self.votes[ref.ordinal]
        row = self.kept[ref.ordinal]
        row[:] = 0
        kept = row if ref.ordinal in self.counted else row[:0]  # an empty row: the kernel counts nothing
        at, alt = buffers["at"], buffers[("alt", storage)]
        # (a block merged again is not counted again: its counts do not depend on the majority sign)
        counts = self.report.fresh(ref) if self.report is not None and not self.redoing else ()
        recorded = self.block.merge(ref, base, fts, out, votes, kept, at, alt, redoing=self.redoing, counts=counts)
        if self.report is not None and counts:
            self.report.take(ref, counts)
        if recorded:  # (a block with open elements not recorded is merged again)
            self.patches.keep(ref.ordinal, at[:recorded], alt[:recorded])
        self.writes.submit(buffer, functools.partial(self._write, ref, out, votes, row, self.redoing))

    def remote_part(self) -> RemotePart:
        """This merge's part of a task a cluster's worker runs."""
        return RemotePart(
            self.block,
            frozenset(self.counted),
            self.sink.block_writer(),
            self.report is not None,
            self.report.signs.block_writer() if self.report is not None and self.report.signs is not None else None,
            str(self.patches.folder) if self.patches.folder is not None else None,
            self.count_only,
        )

    def collect(self, state: dict[str, Any], part: int) -> None:
        """Take in what a cluster's task sent back for this merge (its ``part``): per block, the votes,
        kept counts, recorded open elements and report counts; then journal each block (its write is done)."""
        for ordinal, (ref, results) in state.get("blocks", {}).items():
            result = results.get(part)
            if result is None:
                continue
            if ordinal in self.count_only:  # (counted for the report only: its merge was journaled before)
                if self.report is not None and result.report is not None:
                    self.report.accept(ref, result.report)
                continue
            self.votes[ordinal] = result.votes
            self.kept[ordinal] = result.kept if result.kept.size else 0
            if result.at is not None and result.alt is not None:
                self.patches.keep(ordinal, result.at, result.alt)
            elif result.record is not None:
                self.patches.refer(ordinal, result.record)
            if self.report is not None and result.report is not None:
                self.report.accept(ref, result.report)
            if self.journal is not None:
                if self.redoing:
                    self.journal.redone(ordinal)
                else:
                    self.journal.merged(ordinal, self.votes[ordinal, :3], self.kept[ordinal])
        magnitudes = state.get("magnitudes", {}).get(part)
        if self.report is not None and magnitudes is not None:
            self.report.add_magnitudes(magnitudes)

    def _write(self, ref: BlockRef, out: np.ndarray, votes: np.ndarray, kept: np.ndarray, redoing: bool) -> None:
        """Write a merged block, then journal it (run by :class:`WriteQueue`'s writer thread)."""
        self.sink.write(ref.tensor.name, ref.start, out)
        if self.journal is not None:
            if redoing:
                self.journal.redone(ref.ordinal)
            else:
                self.journal.merged(ref.ordinal, votes[:3], kept)

    def patch_block(self, ref: BlockRef) -> None:
        """Give a block's recorded open elements their result under the other (exact) sign."""
        at, alt = self.patches.take(ref.ordinal)
        values = decode_oracle(alt)
        if not np.all(np.isfinite(values)):
            index = ref.start + int(at[np.argmin(np.isfinite(values))])
            raise NonFiniteValueError(
                self.inputs.describe_nonfinite(ref.tensor.name, index, None, ref.tensor.out_dtype)
            )
        self.sink.patch(ref.tensor.name, ref.start, ref.stop, at, alt)
        if self.journal is not None:
            self.journal.redone(ref.ordinal)


def run_pass2(
    plan: MergePlan,
    inputs: MergeInputs,
    pass1: Pass1Result,
    sink: Output,
    progress: ProgressFactory | None,
    journal: Journal | None,
    spill: Path | None = None,
    report: Collector | None = None,
) -> tuple[Thresholds, int, int]:
    """Merge and write every block not yet done; return the thresholds with every majority sign exact,
    how many blocks an interrupted run had done, and the input bytes of the blocks merged here."""
    return run_pass2_shared([Pass2Job(plan, pass1, sink, journal, spill, report)], inputs, progress)[0][0]


def run_pass2_shared(
    jobs: Sequence[Pass2Job], inputs: MergeInputs, progress: ProgressFactory | None
) -> tuple[list[tuple[Thresholds, int, int]], int]:
    """Pass 2 of several merges of the same ``inputs`` (:func:`run_pass2` of each), reading each input
    block once for all the merges that need it; and the input bytes of the merged blocks read for them
    all (blocks merged again included). Each merge's bytes read are its own blocks' (what it would have
    read alone)."""
    blocks = plan_blocks(jobs[0].plan.merged)
    for job in jobs[1:]:
        if job.plan.block_elements != jobs[0].plan.block_elements:
            raise ValueError("the merges of a shared pass 2 must have the same block grid")
    runners = [Pass2(job, inputs) for job in jobs]
    resumed: list[tuple[int, set[int]]] = []
    needed: dict[int, list[int]] = {}  # block ordinal: the jobs that still merge it
    for j, (job, runner) in enumerate(zip(jobs, runners, strict=True)):
        done, redone = _resume_state(job, runner, len(blocks))
        if done and job.report is not None:  # the blocks done before are read again, to be counted
            runner.count_only = frozenset(done)
            logger.info("resume: the report counts the %d blocks done before again (they are not written)", len(done))
        resumed.append((len(done), redone))
        for ref in blocks:
            if ref.ordinal not in done or ref.ordinal in runner.count_only:
                needed.setdefault(ref.ordinal, []).append(j)
                runner.bytes_read += ref.in_nbytes
    todo = [ref for ref in blocks if ref.ordinal in needed]
    copies = [
        (t, start, stop) for t in jobs[0].plan.tensors if t.kind is TensorKind.COPY for start, stop in t.grid.blocks()
    ]
    total = sum(b.in_nbytes for b in todo) + sum((stop - start) * t.in_dtypes[0].itemsize for t, start, stop in copies)

    def task(ref: BlockRef, buffers: dict[int, dict[Any, np.ndarray]]) -> None:
        base, fts = inputs.block(ref.tensor.name, ref.start, ref.stop)
        for j in needed[ref.ordinal]:
            state = buffers.get(j)
            if state is None:
                state = buffers[j] = runners[j].new_state()
            if ref.ordinal in runners[j].count_only:
                runners[j].count_arrays(ref, base, fts, state)
            else:
                runners[j].merge_arrays(ref, base, fts, state)
        inputs.release(ref.tensor.name, ref.start, ref.stop)

    description = "pass 2/2: merge" if len(jobs) == 1 else f"pass 2/2: merge ({len(jobs)} merges)"
    try:
        with progress_bar(progress, description, total) as bar:
            for tensor, start, stop in copies:
                values = inputs.base.read(tensor.name, start, stop)
                for runner in runners:
                    runner.sink.write(tensor.name, start, values)
                inputs.base.release(tensor.name, start, stop)
                if bar is not None:
                    bar.advance((stop - start) * tensor.in_dtypes[0].itemsize)
            executor = runners[0].executor
            if executor.remote:  # (each worker writes its blocks; the driver journals them as they come)
                parts = tuple(runner.remote_part() for runner in runners)
                remote = RemoteMerge(inputs, parts, {o: tuple(js) for o, js in needed.items()}, False)

                def collect(state: dict[str, Any]) -> None:
                    for j, runner in enumerate(runners):
                        runner.collect(state, j)

                executor.stream(todo, remote, dict, collect, cost=in_nbytes, progress=bar)
            else:
                run_blocks(todo, task, dict, threads=runners[0].threads, cost=in_nbytes, progress=bar)
            for runner in runners:
                runner.writes.drain()
        results = []
        read = sum(b.in_nbytes for b in todo)
        for job, runner, (finished, redone) in zip(jobs, runners, resumed, strict=True):
            check_kept(runner.kept, runner.counted, runner.by_sample, job.pass1.thresholds, blocks, inputs)
            before = runner.bytes_read
            final = _settle_majority(runner, job.pass1, blocks, progress, redone)
            read += runner.bytes_read - before  # (blocks merged again)
            results.append((final, finished, runner.bytes_read))
        return results, read
    finally:
        for runner in runners:
            runner.writes.close()  # (after a failure, the writes not yet started are dropped)
            runner.patches.close()


def _resume_state(job: Pass2Job, runner: Pass2, n_blocks: int) -> tuple[dict[int, tuple[int, ...]], set[int]]:
    """The blocks an interrupted run of this merge finished (with their votes and kept counts, loaded
    into ``runner``) and those it had already corrected."""
    if job.journal is None:
        return {}, set()
    done, redone, _ = job.journal.finished(job.plan.n_models)
    for ordinal, counts in done.items():
        if 0 <= ordinal < n_blocks:
            pos, neg, open_ = counts[:3]
            runner.votes[ordinal] = (pos, neg, open_, open_)  # their open elements were not kept
            runner.kept[ordinal] = counts[3:]
    if done:
        logger.info("resume: %d of %d blocks were done", len(done), n_blocks)
    return done, redone


def _settle_majority(
    runner: Pass2,
    pass1: Pass1Result,
    blocks: list[BlockRef],
    progress: ProgressFactory | None,
    redone: set[int],
) -> Thresholds:
    """Replace guessed majority signs by the exact ones counted in pass 2, redoing blocks if needed.

    Only *open* elements (an exact zero vote between non-zero values) depend on the majority sign.
    When a guess was wrong, the open elements pass 2 recorded get their other result written in place;
    blocks with open elements it could not record (decided by a tie quota or a drop, or merged by an
    interrupted run) are merged again with the exact sign. ``redone``: blocks an interrupted run had already corrected.
    """
    thresholds = pass1.thresholds
    if not pass1.guessed:
        return thresholds
    exact = dict(thresholds.majority)
    redo: list[BlockRef] = []
    patch: list[BlockRef] = []
    by_key: dict[str, list[BlockRef]] = {}
    for ref in blocks:
        by_key.setdefault(thresholds.key(ref.tensor.name), []).append(ref)
    for key in sorted(pass1.guessed):
        members = by_key.get(key, [])
        votes = runner.votes[[b.ordinal for b in members]].sum(axis=0) if members else np.zeros(4, np.int64)
        exact[key] = int(np.sign(votes[0] - votes[1]))
        if (exact[key] > 0) != runner.zero_positive[key]:
            logger.info(
                "majority sign of %s: guessed %+d, exact %+d (%d open elements, %d not recorded)",
                key or "the model",
                thresholds.majority[key],
                exact[key],
                votes[2],
                votes[3],
            )
            runner.zero_positive[key] = exact[key] > 0
            for b in members:
                if runner.votes[b.ordinal, 2] == 0 or b.ordinal in redone:
                    continue
                if b.ordinal in runner.patches:
                    patch.append(b)
                else:
                    redo.append(b)
    logger.info("majority sign: %d blocks corrected in place, %d merged again", len(patch), len(redo))
    for b in patch:
        runner.patch_block(b)
    runner.redoing = True
    with progress_bar(progress, "pass 2/2: redo (majority sign)", sum(b.in_nbytes for b in redo)) as bar:
        runner.run(redo, bar)
    return dataclasses.replace(thresholds, majority=types.MappingProxyType(exact))
